"""Curvature at initialisation: the sharpness, the predicted LR ceiling per batch size, the
noise scale and the Lipschitz bound, before any probe trains."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from stabcheck.engine.curvature.lipschitz import lipschitz_bound
from stabcheck.engine.curvature.measure import (
    PROBE_BATCH,
    measure_curvature,
    probe_batch_index,
    stability_rule,
)
from stabcheck.engine.curvature.noise import noise_pair, noise_scale
from stabcheck.engine.failures import describe_exception
from stabcheck.engine.instruments import build_model
from stabcheck.problem import Problem, TensorData
from stabcheck.records import significant

ADAPTIVE_NOTE = (
    "no LR ceiling is predicted at init for adaptive optimizers: before the first steps the "
    "second-moment estimate is a handful of squared gradients, near zero (so P ~ eps) wherever "
    "a gradient is small, which makes the preconditioned sharpness explode; and Adam's "
    "per-coordinate step is bounded by about lr*(1-beta1)/sqrt(1-beta2), so the frozen-"
    "preconditioner analysis does not predict divergence there. The preconditioned sharpness "
    "is tracked during probes instead (probe.curvature_every), once the optimizer has state.")


def init_curvature(problem: Problem, seed: int, data: TensorData,
                   batch_sizes: Sequence[int], curvature_batch: int = PROBE_BATCH
                   ) -> dict[str, Any]:
    """Curvature at initialisation for one seed; ``{"error": ...}`` when user code fails.

    Sharpness on the fixed batch (the full batch for small data), the sharpness of the first
    mini-batches of each sweep batch size, the predicted LR ceiling per batch size, the
    gradient noise scale and the Lipschitz bound. Cheap: a few dozen Hessian-vector products.
    """
    try:
        return _init_curvature(problem, seed, data, batch_sizes, curvature_batch)
    except Exception as exc:
        return {"error": describe_exception(exc)}


def _init_curvature(problem: Problem, seed: int, data: TensorData,
                    batch_sizes: Sequence[int], curvature_batch: int) -> dict[str, Any]:
    started = time.perf_counter()
    model = build_model(problem, seed)  # the same initial weights as every probe of this seed
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = problem.make_optimizer(params, 1.0)  # only read for its hyperparameters
    rule = stability_rule(optimizer)
    index = probe_batch_index(seed, data.n, problem.device, curvature_batch)
    warm: dict[str, Any] = {}
    full = measure_curvature(model, problem.loss_fn, data.batch(index), optimizer, warm,
                             seed=seed)
    by_batch: dict[str, dict[str, Any]] = {}
    for bs in sorted(set(batch_sizes)):
        # The sharpness is that of the fixed (full, for small data) batch for every batch
        # size; only an adaptive optimizer's preconditioner depends on the batch size, through
        # v_hat ~ E[g_B^2], estimated on the first batches a probe of this size will see.
        entry: dict[str, Any] = {"sharpness": full["sharpness"]}
        judged = entry["sharpness"]
        if judged is not None and not rule.preconditioned:
            entry["predicted_lr_ceiling"] = significant(rule.ceiling(judged + rule.weight_decay))
        else:
            entry["predicted_lr_ceiling"] = None
        by_batch[str(bs)] = entry
    pair = noise_pair(batch_sizes, data.n)
    noise = noise_scale(model, problem.loss_fn, data, *pair, seed=seed) if pair else None
    lips = lipschitz_bound(model)
    return {
        "probe_batch": int(index.numel()), "full_batch": bool(index.numel() == data.n),
        "sharpness": full["sharpness"],
        "prediction": None if not rule.preconditioned else ADAPTIVE_NOTE,
        "rule": rule.kind, "limit_constant": significant(rule.constant), "limit": rule.formula,
        "by_batch_size": by_batch, "noise_scale": noise,
        "lipschitz": lips["lipschitz"], "log10_lipschitz": lips["log10_lipschitz"],
        "spectral_norms": lips["layers"],
        "time_s": round(time.perf_counter() - started, 4),
    }
