"""Whether the vectorized engine can run an audit, and why not (one line) when it cannot.

Cheap checks first (the optimizer registry, the model's structure), then a trial step under
``vmap`` compared with the reference engine's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from stabcheck import optimizers
from stabcheck.engine.base import EngineSettings
from stabcheck.engine.failures import free_memory
from stabcheck.engine.instruments import COL, build_model
from stabcheck.engine.sequential import SequentialProbe
from stabcheck.engine.vectorized import rnn
from stabcheck.engine.vectorized.stacked import CohortRun
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Problem, TensorData


def _vectorizable() -> str:
    names = [n for n in optimizers.BUILTIN_OPTIMIZERS if optimizers.get(n).stacked is not None]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def optimizer_reason(problem: Problem) -> str | None:
    """Why the optimizer cannot be vectorized, or ``None`` when it can."""
    name = problem.optimizer_name
    spec = optimizers.get(name) if name in optimizers.OPTIMIZERS else None
    if spec is None or spec.stacked is None:
        what = "custom optimizer" if ":" in name else "optimizer"
        return f"{what} {name!r} has no vectorized implementation ({_vectorizable()} do)"
    unsupported = spec.unsupported_option(problem.optimizer_kwargs)
    if unsupported is not None:
        return f"{name} option {unsupported} has no vectorized implementation"
    try:  # options torch.optim itself rejects (e.g. nesterov without momentum)
        problem.make_optimizer([nn.Parameter(torch.zeros(1))], 0.1)
    except Exception as exc:
        return f"the optimizer cannot be built ({type(exc).__name__}: {exc})"
    return None


def model_reason(model: nn.Module) -> str | None:
    """Why this model cannot be stacked, or ``None``.

    BatchNorm running statistics are stacked like parameters and updated in place under
    ``vmap``, each member's own; a cumulative average (``momentum=None``) divides by the
    Python number of batches seen, which ``vmap`` cannot give.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats \
                and module.momentum is None:
            return (f"{name or 'the model'} is a {type(module).__name__} with momentum=None "
                    "(a cumulative average), which vmap-ed members cannot update")
    return rnn.model_reason(model)


def _no_grad_params(problem: Problem, data: TensorData, batch_size: int) -> list[str]:
    """Trainable parameters that one plain backward pass leaves without a gradient."""
    model = build_model(problem, 0)
    loss = problem.loss_fn(model, data.batch(torch.arange(min(batch_size, data.n),
                                                          device=problem.device)))
    loss.float().backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def _is_stochastic(problem: Problem, data: TensorData, batch_size: int) -> bool:
    """Whether two training-mode forwards of one model on one batch give different losses."""
    model = build_model(problem, 0)
    batch = data.batch(torch.arange(min(batch_size, data.n), device=problem.device))
    with torch.no_grad():
        first = problem.loss_fn(model, batch).float()
        again = problem.loss_fn(model, batch).float()
    return not torch.equal(first, again)


def trial_members(probes: Sequence[ProbeSpec], batch_size: int) -> list[ProbeSpec]:
    """The trial cohort: the first two probes of ``batch_size`` and its last one.

    More than one member, because what goes wrong under ``vmap`` often spares the first
    (a batching rule that offsets each member's indices into one stacked tensor).
    """
    same = [p for p in probes if p.batch_size == batch_size]
    return same[:2] + same[-1:] if len(same) > 2 else same


def trial_mismatch(problem: Problem, members: list[ProbeSpec], one: EngineSettings,
                   data: TensorData, dtype: str, eval_mode: bool,
                   math_attention: bool = False) -> str | None:
    """One vectorized step of ``members`` against the sequential engine's, member by member.

    ``None`` when every member's loss, gradient norm and per-layer gradient norms agree;
    otherwise which member and statistic differ, and by how much (one phrase).
    """
    trial = CohortRun(problem, members, one, data, math_attention=math_attention)
    if eval_mode:
        trial.base.eval()
    trial.step(0)
    vec_stats, vec_layers = trial.buffer.flush(1)
    buffers = {name: trial.consts[name].detach().cpu() for name, _ in trial.base.named_buffers()
               if name in trial.consts and trial.consts[name].is_floating_point()}
    del trial
    rtol = 1e-3 if dtype == "float32" else 5e-2
    cols = {"loss": COL["loss"], "gradient norm": COL["grad_norm"]}
    for pos, spec in enumerate(members):
        # The same step by the reference: a model that hides state from the parameter swap
        # (a cached weight, a Python-side counter) runs under vmap but computes differently.
        reference = SequentialProbe(problem, spec, one, data)
        if eval_mode:
            reference.model.eval()
        reference.step(0)
        seq_stats, seq_layers = reference.buffer.flush(1)
        pairs = [(what, vec_stats[pos, 0, c], seq_stats[0, c]) for what, c in cols.items()]
        pairs += [(f"layer {name!r} gradient norm", vec_layers[pos, 0, j], seq_layers[0, j])
                  for j, name in enumerate(reference.layers.names)]
        for name, stacked in buffers.items():  # BatchNorm running statistics, after the step
            ref = reference.model.get_buffer(name).detach().cpu().float()
            if not torch.allclose(stacked[pos].float(), ref, rtol=rtol, atol=1e-6,
                                  equal_nan=True):
                err = float((stacked[pos].float() - ref).abs().max())
                return (f"member {pos + 1} of {len(members)} (seed {spec.seed}, lr "
                        f"{spec.lr:g}): buffer {name!r} differs by up to {err:.3g}")
        for what, vec, seq in pairs:
            if not np.allclose(vec, seq, rtol=rtol, atol=1e-6, equal_nan=True):
                return (f"member {pos + 1} of {len(members)} (seed {spec.seed}, lr {spec.lr:g}): "
                        f"{what} {float(vec):.4g} vectorized vs {float(seq):.4g} sequential")
    return None


def _trial(problem: Problem, members: list[ProbeSpec], one: EngineSettings, data: TensorData,
           stochastic: bool, math_attention: bool) -> str | None:
    """The trial step (raises what ``vmap`` refuses); the disagreement, or ``None``."""
    # A stochastic forward (dropout) draws different masks in the two engines: the step
    # under vmap runs as trained (anything vmap refuses surfaces), and the comparison
    # runs with the randomness switched off in both (eval mode), so dropout alone never
    # looks like a disagreement.
    if stochastic:
        CohortRun(problem, members, one, data, math_attention=math_attention).step(0)
    return trial_mismatch(problem, members, one, data, one.dtype, eval_mode=stochastic,
                          math_attention=math_attention)


def vectorized_choice(problem: Problem, settings: EngineSettings, data: TensorData,
                      probes: Sequence[ProbeSpec]) -> tuple[str | None, dict[str, Any]]:
    """Why the vectorized engine cannot run this audit (``None`` when it can), and the
    :class:`~stabcheck.engine.vectorized.VectorizedEngine` options the trial settled on.

    Cheap checks first (optimizer, dtype, model structure), then a trial: up to three members
    (:func:`trial_members`) run one real vectorized step, each compared with its own
    sequential step, so anything ``vmap`` refuses (data-dependent control flow, ...)
    surfaces here rather than in the middle of the audit. A trial that fails is tried once
    more with attention through its composite kernel (``math_attention``).
    """
    if not probes:
        return None, {}
    reason = optimizer_reason(problem)
    if reason:
        return reason, {}
    options: dict[str, Any] = {}
    try:
        model = build_model(problem, 0)
        reason = model_reason(model)
        if reason:
            return reason, {}
        bs = min(p.batch_size for p in probes)
        missing = _no_grad_params(problem, data, bs)
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            return f"parameter {missing[0]}{more} gets no gradient", {}
        reason = rnn.slower_reason(problem, model, data, probes)  # a measured speed rule
        del model
        if reason:
            return reason, {}
        members = trial_members(probes, bs)
        one = EngineSettings(steps=1, dtype=settings.dtype, grad_clip=settings.grad_clip)
        stochastic = _is_stochastic(problem, data, bs)
        try:
            mismatch = _trial(problem, members, one, data, stochastic, math_attention=False)
        except Exception as first:
            free_memory(problem.device)
            try:
                mismatch = _trial(problem, members, one, data, stochastic, math_attention=True)
            except Exception:
                raise first from None
            options["math_attention"] = True
        if mismatch:
            return (f"a trial step under vmap disagrees with the sequential engine, {mismatch} "
                    "(the model may keep state outside its parameters and buffers, or use an "
                    "operation vmap batches wrongly)"), {}
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        return (f"the model does not run under vmap ({type(exc).__name__}: "
                f"{detail[0][:160] if detail else ''})"), {}
    finally:
        free_memory(problem.device)
    return None, options


def vectorized_reason(problem: Problem, settings: EngineSettings, data: TensorData,
                      probes: Sequence[ProbeSpec]) -> str | None:
    """Why the vectorized engine cannot run this audit, or ``None`` (:func:`vectorized_choice`)."""
    return vectorized_choice(problem, settings, data, probes)[0]
