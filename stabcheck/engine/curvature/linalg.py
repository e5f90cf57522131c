"""Linear algebra for the curvature measurement: Hessian-vector products on one gradient
graph, and power iteration for the top (algebraic) eigenvalue.

Measurements never perturb training (:func:`preserved`): gradients are taken with
``torch.autograd.grad`` (no ``.grad`` is touched), RNG states and module buffers (BatchNorm
statistics) are saved and restored around them, and the model stays in its current
train/eval mode.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from stabcheck.engine.instruments import rng_preserved
from stabcheck.problem import Batch, LossFn

MAX_ITERS = 20  # power-iteration steps per measurement (warm starts usually need far fewer)
TOL = 1e-3  # relative change of the Rayleigh quotient at which power iteration stops
# During a probe the EoS ratio is judged against 1 and compared across measurements: a
# looser tolerance there (a residual of ~10%, so the quotient is within ~1%) halves the cost.
TRACK_TOL = 1e-2
# |A v| below this counts as zero curvature: a sharpness of 1e-7 limits no LR under 2e7,
# and without a floor a vanishing Hessian (a loss at 0) would never meet a relative tolerance.
NEGLIGIBLE = 1e-7

Vectors = list[torch.Tensor]


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Run a measurement without changing training: RNG and buffers restored, no grads left.

    Also picks autograd-friendly kernels: double backward needs the math attention kernel
    (flash/efficient SDPA kernels have no second derivative) and no cuDNN RNN.
    """
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with rng_preserved(), contextlib.ExitStack() as stack:
            with contextlib.suppress(Exception):
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
            yield
    finally:
        with torch.no_grad():
            for buf, saved in zip(model.buffers(), buffers, strict=False):
                buf.copy_(saved)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def random_like(params: Sequence[torch.Tensor], seed: int) -> Vectors:
    """A random direction from a private generator (the global RNG is not touched)."""
    g = generator(seed)
    return [torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
            for p in params]


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)]).sum()


def vector_norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return dot(a, a).sqrt()


class HessianVectorProduct:
    """``v -> H v`` for the loss of one batch, reusing one gradient graph for every product."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Batch,
                 params: Sequence[torch.Tensor] | None = None) -> None:
        self.params = list(params) if params is not None else \
            [p for p in model.parameters() if p.requires_grad]
        self.loss = loss_fn(model, batch).float()
        grads = torch.autograd.grad(self.loss, self.params, create_graph=True,
                                    allow_unused=True)
        self.grads = [g if g is not None else torch.zeros_like(p)
                      for g, p in zip(grads, self.params, strict=True)]
        self.curved = [g.requires_grad for g in self.grads]  # False: H is zero in that block
        self.calls = 0

    def gradient(self) -> Vectors:
        """The batch gradient (detached)."""
        return [g.detach() for g in self.grads]

    def __call__(self, vectors: Sequence[torch.Tensor]) -> Vectors:
        self.calls += 1
        pairs = [(g, v) for g, v, c in zip(self.grads, vectors, self.curved, strict=True) if c]
        if not pairs:
            return [torch.zeros_like(v) for v in vectors]
        dot = torch.stack([(g * v).sum() for g, v in pairs]).sum()
        wrt = [p for p, c in zip(self.params, self.curved, strict=True) if c]
        hv = torch.autograd.grad(dot, wrt, retain_graph=True, allow_unused=True)
        out: Vectors = []
        it = iter(hv)
        for p, c in zip(self.params, self.curved, strict=True):
            h = next(it) if c else None
            out.append(h.detach() if h is not None else torch.zeros_like(p))
        return out


@dataclass
class Eigen:
    """What a power iteration found: Rayleigh quotient, unit vector, products taken, and
    whether it converged (``radius`` is ``|A v|``, an estimate of the spectral radius)."""

    value: float
    vector: Vectors
    iterations: int
    converged: bool = False
    radius: float = float("nan")


def power_iteration(matvec: Callable[[Vectors], Vectors], start: Vectors,
                    max_iters: int = MAX_ITERS, tol: float = TOL) -> Eigen:
    """Dominant eigenvalue (largest magnitude) of a symmetric operator, by power iteration.

    The estimate is the Rayleigh quotient ``v.Av`` of the current unit vector. Iteration stops
    after ``max_iters``, or once the quotient changes by less than ``tol`` (relative) *and* the
    residual ``|Av - value v|`` is below ``sqrt(tol)`` of it: the residual test stops a vector
    caught between a positive and a negative eigenvalue of similar size from passing for
    converged (its quotient drifts too slowly to trip the first test alone).
    """
    norm = float(vector_norm(start))
    if not math.isfinite(norm) or norm == 0.0:
        return Eigen(float("nan"), list(start), 0)
    v = [x / norm for x in start]
    value, prev = float("nan"), None
    res_tol = math.sqrt(tol)
    for i in range(1, max_iters + 1):
        w = matvec(v)
        value = float(dot(v, w))
        w_norm = float(vector_norm(w))
        if not math.isfinite(value) or not math.isfinite(w_norm):
            return Eigen(float("nan"), v, i)
        if w_norm <= NEGLIGIBLE:  # (numerically) zero curvature: nothing to converge to
            return Eigen(value, v, i, True, w_norm)
        residual = float(vector_norm([y - value * x for x, y in zip(v, w, strict=True)]))
        v = [x / w_norm for x in w]
        if prev is not None and abs(value - prev) <= tol * abs(value) \
                and residual <= res_tol * abs(value):
            return Eigen(value, v, i, True, w_norm)
        prev = value
    return Eigen(value, v, max_iters, False, w_norm)


def top_eigen(matvec: Callable[[Vectors], Vectors], start: Vectors,
              max_iters: int = MAX_ITERS, tol: float = TOL) -> Eigen:
    """The largest *algebraic* eigenvalue (a Hessian's sharpness, not its most negative one).

    A first power iteration finds the dominant eigenvalue. When that is positive and
    converged, it is the answer. Otherwise (negative, or caught between eigenvalues of both
    signs) a second iteration runs on ``A + s I`` with ``s`` the spectral radius estimate, whose
    spectrum is shifted to ``[0, lambda_max + s]``; its top eigenvalue minus ``s`` is
    ``lambda_max``.
    """
    first = power_iteration(matvec, start, max_iters, tol)
    if not math.isfinite(first.value) or (first.value > 0 and first.converged):
        return first
    shift = max(abs(first.value), first.radius if math.isfinite(first.radius) else 0.0)

    def shifted(v: Vectors) -> Vectors:
        return [h + shift * x for h, x in zip(matvec(v), v, strict=True)]

    second = power_iteration(shifted, first.vector, max_iters, tol)
    return Eigen(second.value - shift, second.vector, first.iterations + second.iterations,
                 second.converged, second.radius - shift)
