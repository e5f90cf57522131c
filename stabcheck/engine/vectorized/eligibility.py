"""Whether the vectorized engine can run an audit, and why not (one line) when it cannot.

Cheap checks first (the optimizer registry, the model's structure), then a trial step under
``vmap`` compared with the reference engine's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from stabcheck import optimizers
from stabcheck.engine.base import EngineSettings
from stabcheck.engine.failures import free_memory
from stabcheck.engine.instruments import COL, build_model
from stabcheck.engine.sequential import SequentialProbe
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
    """Why this model cannot be stacked, or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return (f"{name or 'the model'} is a {type(module).__name__} with running statistics, "
                    "which vmap-ed members cannot update")
    return None


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


def _trial_agrees(problem: Problem, first: list[ProbeSpec], one: EngineSettings,
                  data: TensorData, dtype: str, eval_mode: bool) -> bool:
    """One vectorized step of ``first`` against the sequential engine's (loss, norms)."""
    trial = CohortRun(problem, first, one, data)
    reference = SequentialProbe(problem, first[0], one, data)
    if eval_mode:
        trial.base.eval()
        reference.model.eval()
    trial.step(0)
    vec_stats, vec_layers = trial.buffer.flush(1)
    # The same step by the reference: a model that hides state from the parameter swap
    # (a cached weight, a Python-side counter) runs under vmap but computes differently.
    reference.step(0)
    seq_stats, seq_layers = reference.buffer.flush(1)
    rtol = 1e-3 if dtype == "float32" else 5e-2
    cols = [COL["loss"], COL["grad_norm"]]
    return bool(np.allclose(vec_stats[0, 0, cols], seq_stats[0, cols], rtol=rtol, atol=1e-6,
                            equal_nan=True)
                and np.allclose(vec_layers[0, 0], seq_layers[0], rtol=rtol, atol=1e-6,
                                equal_nan=True))


def vectorized_reason(problem: Problem, settings: EngineSettings, data: TensorData,
                      probes: Sequence[ProbeSpec]) -> str | None:
    """Why the vectorized engine cannot run this audit, or ``None`` when it can.

    Cheap checks first (optimizer, dtype, model structure), then a trial: two members run one
    real vectorized step, so anything ``vmap`` refuses (data-dependent control flow, ...)
    surfaces here rather than in the middle of the audit.
    """
    if not probes:
        return None
    reason = optimizer_reason(problem)
    if reason:
        return reason
    try:
        reason = model_reason(build_model(problem, 0))
        if reason:
            return reason
        bs = min(p.batch_size for p in probes)
        missing = _no_grad_params(problem, data, bs)
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            return f"parameter {missing[0]}{more} gets no gradient"
        first = [p for p in probes if p.batch_size == bs][:2]
        one = EngineSettings(steps=1, dtype=settings.dtype, grad_clip=settings.grad_clip)
        # A stochastic forward (dropout) draws different masks in the two engines: the step
        # under vmap runs as trained (anything vmap refuses surfaces), and the comparison
        # runs with the randomness switched off in both (eval mode), so dropout alone never
        # looks like a disagreement.
        stochastic = _is_stochastic(problem, data, bs)
        if stochastic:
            CohortRun(problem, first, one, data).step(0)
        if not _trial_agrees(problem, first, one, data, settings.dtype, eval_mode=stochastic):
            return ("a trial step under vmap disagrees with the sequential engine (the model "
                    "may keep state outside its parameters and buffers)")
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        return (f"the model does not run under vmap ({type(exc).__name__}: "
                f"{detail[0][:160] if detail else ''})")
    finally:
        free_memory(problem.device)
    return None
