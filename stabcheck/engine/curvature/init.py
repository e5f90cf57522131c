"""Curvature at initialisation: the sharpness, the predicted LR ceiling per batch size, the
noise scale and the Lipschitz bound, before any probe trains.

What does not depend on the seed is decided once per audit (:func:`plan_for`: the optimizer's
stability rule, whether a ceiling is predicted at all, the budget of :mod:`.budget`); the
noise scale is measured once per audit (on the first seed measured), the sharpness and the
Lipschitz bound per seed (they depend on the initial weights).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from stabcheck.engine.curvature.budget import INIT_BUDGET, InitPlan, plan_init, unbounded_plan
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
from stabcheck.optimizers.spec import UNKNOWN_RULE, StabilityRule
from stabcheck.problem import Problem, TensorData
from stabcheck.records import significant

ADAPTIVE_NOTE = (
    "no LR ceiling is predicted at init for adaptive optimizers: before the first steps the "
    "second-moment estimate is a handful of squared gradients, near zero (so P ~ eps) wherever "
    "a gradient is small, which makes the preconditioned sharpness explode; and Adam's "
    "per-coordinate step is bounded by about lr*(1-beta1)/sqrt(1-beta2), so the frozen-"
    "preconditioner analysis does not predict divergence there. The preconditioned sharpness "
    "is tracked during probes instead (probe.curvature_every), once the optimizer has state.")


SKIPPED_ADAPTIVE = "not measured: no LR ceiling is predicted at init for adaptive optimizers"
SKIPPED_BUDGET = (f"not measured: over the init budget ({INIT_BUDGET:.0%} of the probes' cost), "
                  "which covers the first {count} seed(s)")


def _rule(problem: Problem) -> StabilityRule:
    """The optimizer's stability rule, from an optimizer over one stand-in parameter."""
    try:
        return stability_rule(problem.make_optimizer([torch.nn.Parameter(torch.zeros(1))], 1.0))
    except Exception:  # a user optimizer that wants real parameters: decided per seed
        return UNKNOWN_RULE


def plan_for(problem: Problem, seeds: Sequence[int], n: int, batch_sizes: Sequence[int],
             probe_cost: float | None, curvature_batch: int = PROBE_BATCH) -> InitPlan:
    """The once-per-audit plan (see :mod:`.budget`); no budget when ``probe_cost`` is None."""
    sharpness = not _rule(problem).preconditioned
    if probe_cost is None:
        return unbounded_plan(seeds, n, curvature_batch, sharpness)
    return plan_init(list(seeds), n, probe_cost, noise_pair(batch_sizes, n), curvature_batch,
                     sharpness)


def init_curvature(problem: Problem, seed: int, data: TensorData,
                   batch_sizes: Sequence[int], curvature_batch: int = PROBE_BATCH,
                   plan: InitPlan | None = None, noise: bool = True) -> dict[str, Any]:
    """Curvature at initialisation for one seed; ``{"error": ...}`` when user code fails.

    Sharpness on the fixed batch (the full batch for small data) by Lanczos, the predicted LR
    ceiling per batch size, the gradient noise scale (when ``noise``: once per audit) and the
    Lipschitz bound. ``plan`` (from :func:`plan_for`) says which seeds' sharpness is measured,
    on how many examples and with how many steps; without one, everything is measured in full.
    """
    try:
        return _init_curvature(problem, seed, data, batch_sizes, curvature_batch, plan, noise)
    except Exception as exc:
        return {"error": describe_exception(exc)}


def _init_curvature(problem: Problem, seed: int, data: TensorData,
                    batch_sizes: Sequence[int], curvature_batch: int, plan: InitPlan | None,
                    noise: bool) -> dict[str, Any]:
    started = time.perf_counter()
    model = build_model(problem, seed)  # the same initial weights as every probe of this seed
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = problem.make_optimizer(params, 1.0)  # only read for its hyperparameters
    rule = stability_rule(optimizer)
    if plan is None:
        plan = unbounded_plan([seed], data.n, curvature_batch, not rule.preconditioned)
    index = probe_batch_index(seed, data.n, problem.device, plan.batch)
    skipped: str | None = None
    measured: dict[str, Any] = {"sharpness": None, "hvps": 0, "converged": None}
    if rule.preconditioned:
        skipped = SKIPPED_ADAPTIVE
    elif seed not in plan.sharpness_seeds:
        skipped = SKIPPED_BUDGET.format(count=len(plan.sharpness_seeds))
    else:
        measured = measure_curvature(model, problem.loss_fn, data.batch(index), optimizer, {},
                                     seed=seed, max_iters=plan.max_iters)
    by_batch: dict[str, dict[str, Any]] = {}
    for bs in sorted(set(batch_sizes)):
        # The sharpness is that of the fixed (full, for small data) batch for every batch
        # size: the ceiling of plain and heavy-ball SGD does not depend on the batch size.
        entry: dict[str, Any] = {"sharpness": measured["sharpness"]}
        judged = entry["sharpness"]
        if judged is not None and not rule.preconditioned:
            entry["predicted_lr_ceiling"] = significant(rule.ceiling(judged + rule.weight_decay))
        else:
            entry["predicted_lr_ceiling"] = None
        by_batch[str(bs)] = entry
    pair = noise_pair(batch_sizes, data.n) if noise and plan.noise_draws else None
    gns = noise_scale(model, problem.loss_fn, data, *pair, draws=plan.noise_draws,
                      seed=seed) if pair else None
    lips = lipschitz_bound(model)
    return {
        "probe_batch": int(index.numel()), "full_batch": bool(index.numel() == data.n),
        "sharpness": measured["sharpness"], "sharpness_skipped": skipped,
        "method": "lanczos", "hvps": int(measured["hvps"]), "converged": measured["converged"],
        "prediction": None if not rule.preconditioned else ADAPTIVE_NOTE,
        "rule": rule.kind, "limit_constant": significant(rule.constant), "limit": rule.formula,
        "by_batch_size": by_batch, "noise_scale": gns, "plan": plan.describe(),
        "lipschitz": lips["lipschitz"], "log10_lipschitz": lips["log10_lipschitz"],
        "spectral_norms": lips["layers"],
        "time_s": round(time.perf_counter() - started, 4),
    }
