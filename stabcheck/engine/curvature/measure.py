"""One curvature measurement: sharpness, preconditioned sharpness and the edge-of-stability
ratio of a model on one batch, judged against its optimizer's stability limit (which the
optimizer registry, :mod:`stabcheck.optimizers`, knows)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from stabcheck import optimizers
from stabcheck.engine.curvature.lanczos import lanczos
from stabcheck.engine.curvature.linalg import (
    MAX_ITERS,
    TOL,
    Eigen,
    HessianVectorProduct,
    Vectors,
    generator,
    preserved,
    random_like,
    top_eigen,
)
from stabcheck.optimizers.spec import UNKNOWN_RULE, StabilityRule
from stabcheck.problem import Batch, LossFn
from stabcheck.records import significant

PROBE_BATCH = 512  # examples in the fixed batch at init (the full dataset when smaller)
METHODS = ("lanczos", "power")  # how the top eigenvalue is found (power: the shifted pair)


def top_eigenvalue(matvec: Callable[[Vectors], Vectors], start: Vectors,
                   method: str = "lanczos", max_iters: int = MAX_ITERS, tol: float = TOL,
                   deadline: float | None = None) -> Eigen:
    """The largest algebraic eigenvalue by ``method``: Lanczos (the default: fewer products
    for the same accuracy, no shifted second pass) or power iteration (:func:`top_eigen`).
    Parameters spread over several devices fall back to power iteration (the Lanczos basis is
    one flat tensor on one device)."""
    if method == "lanczos" and len({t.device for t in start}) > 1:
        method = "power"
    if method == "lanczos":
        return lanczos(matvec, start, max_iters, tol, deadline)
    if method == "power":
        return top_eigen(matvec, start, max_iters, tol)
    raise ValueError(f"unknown eigenvalue method {method!r}: use one of {', '.join(METHODS)}")


def probe_batch_index(seed: int, n: int, device: torch.device,
                      size: int = PROBE_BATCH) -> torch.Tensor:
    """The fixed curvature batch: the first ``min(n, size)`` of a seeded permutation."""
    return torch.randperm(n, generator=generator(30_011 + seed))[: min(n, size)].to(device)


def stability_rule(optimizer: torch.optim.Optimizer) -> StabilityRule:
    """The stability rule of a (built-in, or subclass of a built-in) torch optimizer."""
    spec = optimizers.spec_of(optimizer)
    return spec.stability_rule(optimizer) if spec is not None else UNKNOWN_RULE


def preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                   rule: StabilityRule, guess: Vectors | None = None) -> Vectors | None:
    """``P = sqrt(v_hat) + eps`` per parameter, from the optimizer's second-moment state.

    Before the first step there is no state; then ``guess`` (a mean squared gradient) stands
    in for it, as the optimizer's spec says its first step would use it.
    """
    spec = optimizers.spec_of(optimizer)
    if not rule.preconditioned or spec is None or spec.second_moment is None:
        return None
    out: Vectors = []
    for i, p in enumerate(params):
        v_hat = spec.second_moment(optimizer.state.get(p, {}), rule)
        if v_hat is None:
            if guess is None or spec.moment_guess is None:
                return None
            v_hat = spec.moment_guess(guess[i], rule)
        out.append(v_hat.detach().float().clamp(min=0).sqrt() + rule.eps)
    return out


def mean_grad_sq(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]) -> Vectors:
    """Elementwise mean of the squared gradient over ``batches``: what Adam's ``v_hat``
    tracks, ``E[g_B^2] = G^2 + diag(Sigma)/B`` for batches of size ``B``."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(model, batch).float(), params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t += g.detach().float().square()
    return [t / max(1, len(batches)) for t in total]


def _operators(hvp: HessianVectorProduct, rule: StabilityRule, precond: Vectors | None
               ) -> tuple[Callable[[Vectors], Vectors], Callable[[Vectors], Vectors] | None]:
    """``v -> H v`` and, for adaptive methods, ``v -> P^-1/2 (H + wd I) P^-1/2 v``."""
    if precond is None:
        return hvp, None
    wd = rule.weight_decay
    scale = [p.reciprocal().sqrt() for p in precond]  # P^-1/2

    def pre(v: Vectors) -> Vectors:
        x = [s * y for s, y in zip(scale, v, strict=True)]
        hx = hvp(x)
        if wd:
            hx = [h + wd * y for h, y in zip(hx, x, strict=True)]
        return [s * h for s, h in zip(scale, hx, strict=True)]

    return hvp, pre


# --------------------------------------------------------------------------- one measurement


def measure_curvature(model: nn.Module, loss_fn: LossFn, batch: Batch,
                      optimizer: torch.optim.Optimizer, state: dict[str, Any] | None = None,
                      lr: float | None = None, first_grad_batch: Batch | None = None,
                      second_moment: Vectors | None = None, want_plain: bool = True,
                      max_iters: int = MAX_ITERS, tol: float = TOL,
                      seed: int = 0, method: str = "lanczos",
                      deadline: float | None = None) -> dict[str, Any]:
    """Sharpness (and preconditioned sharpness) of ``model`` on ``batch``, and the EoS ratio.

    Works on any plain ``nn.Module`` (the vectorized engine calls it on an unstacked
    member). ``state`` carries the warm-start eigenvectors from one call to the next (pass the
    same dict every time). Before an adaptive optimizer's first step its missing second
    moment is stood in for by ``second_moment`` or, failing that, by the squared gradient on
    ``first_grad_batch`` (the batch the first step will use). ``want_plain=False`` skips the
    plain sharpness when only the preconditioned one is needed. ``method`` picks the
    eigensolver (:func:`top_eigenvalue`); ``deadline`` (a ``time.perf_counter()`` value) ends
    a Lanczos run early once it passes. ``hvps`` in the result counts the Hessian-vector
    products taken. Training is not perturbed (see :func:`preserved`).
    """
    state = state if state is not None else {}
    params = [p for p in model.parameters() if p.requires_grad]
    rule = stability_rule(optimizer)
    with preserved(model):
        guess = second_moment
        if guess is None and rule.preconditioned and first_grad_batch is not None \
                and not optimizer.state:
            guess = mean_grad_sq(model, loss_fn, [first_grad_batch])
        hvp = HessianVectorProduct(model, loss_fn, batch, params)
        plain, pre = _operators(hvp, rule, preconditioner(optimizer, params, rule, guess))
        top = Eigen(float("nan"), [], 0)
        if want_plain:
            top = top_eigenvalue(plain, state.get("vector") or random_like(params, seed),
                                 method, max_iters, tol, deadline)
            state["vector"] = top.vector
        pre_value = None
        if pre is not None:
            ptop = top_eigenvalue(pre, state.get("pvector") or random_like(params, seed + 1),
                                  method, max_iters, tol, deadline)
            state["pvector"] = ptop.vector
            pre_value = ptop.value
        loss_value = float(hvp.loss.detach())
        calls = hvp.calls
        del hvp
    # Coupled L2 weight decay adds wd to every eigenvalue of the objective GD sees.
    judged = pre_value if rule.preconditioned else top.value + rule.weight_decay
    limit = rule.limit(lr) if lr is not None else None
    ratio = judged / limit if limit and judged is not None and math.isfinite(judged) else None
    return {"sharpness": significant(top.value), "preconditioned": significant(pre_value),
            "limit": significant(limit), "eos_ratio": significant(ratio),
            "loss": significant(loss_value), "hvps": calls,
            "converged": bool(top.converged) if want_plain else None}
