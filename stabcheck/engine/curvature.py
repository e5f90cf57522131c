"""Curvature of the user's own model: sharpness, the edge of stability, noise scale, Lipschitz.

Gradient descent on a quadratic is stable only while ``eta < 2 / lambda_max(H)``; with
heavy-ball momentum ``beta`` the limit is ``(2 + 2 beta) / eta`` on ``lambda_max``, and Adam
behaves like preconditioned heavy-ball, whose limit is ``2 (1 + beta1) / ((1 - beta1) eta)``
on the top eigenvalue of ``P^-1/2 H P^-1/2`` with ``P = diag(sqrt(v_hat) + eps)`` (Cohen et al.
2021, "Gradient descent on neural networks typically occurs at the edge of stability";
Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"). This module measures
those quantities on any ``nn.Module``:

* **sharpness** — ``lambda_max`` by power iteration on Hessian-vector products. The gradient
  is computed once with ``create_graph=True``; every iteration is then one
  ``autograd.grad(g . v, params, retain_graph=True)`` on that same graph. Iteration starts from
  the previous top eigenvector (warm start), stops after ``max_iters`` or once the Rayleigh
  quotient changes by less than ``tol`` (relative). If the dominant eigenvalue is negative,
  a second, shifted iteration on ``H - mu I`` finds the top (algebraic) one.
* **preconditioned sharpness** (Adam, AdamW, RMSprop) from the optimizer's second-moment state.
* **gradient noise scale** ``B_simple = tr(Sigma) / |G|^2`` from gradients at two batch sizes
  (McCandlish et al. 2018, "An empirical model of large-batch training", appendix A).
* **Lipschitz upper bound** — the product of the spectral norms of every weight matrix
  (power iteration). Conv kernels are reshaped to ``[out, in * k * k]``: that is a heuristic
  stand-in for the conv operator norm, not the exact value. The product bounds a plain
  feed-forward chain with 1-Lipschitz activations; residual connections, attention and
  normalisation layers are not bounded by it, so read it as a trend indicator (how much the
  weights' scale grew during a probe), not as a certificate.

Measurements never perturb training: gradients are taken with ``torch.autograd.grad`` (no
``.grad`` is touched), RNG states and module buffers (BatchNorm statistics) are saved and
restored around them, and the model stays in its current train/eval mode.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stabcheck.engine.instruments import rng_preserved, seed_everything
from stabcheck.problem import Batch, LossFn, Problem, TensorData
from stabcheck.records import significant

PROBE_BATCH = 512  # examples in the fixed batch at init (the full dataset when smaller)
MAX_ITERS = 20  # power-iteration steps per measurement (warm starts usually need far fewer)
TOL = 1e-3  # relative change of the Rayleigh quotient at which power iteration stops
# During a probe the EoS ratio is judged against 1 and compared across measurements: a
# looser tolerance there (a residual of ~10%, so the quotient is within ~1%) halves the cost.
TRACK_TOL = 1e-2
NOISE_DRAWS = 8  # gradient pairs averaged for the noise-scale estimate
# |A v| below this counts as zero curvature: a sharpness of 1e-7 limits no LR under 2e7,
# and without a floor a vanishing Hessian (a loss at 0) would never meet a relative tolerance.
NEGLIGIBLE = 1e-7
SPECTRAL_ITERS = 50  # power-iteration steps for one weight matrix's spectral norm
EXACT_SPECTRAL = 512  # matrices up to this size on their short side get an exact SVD norm

Vectors = list[torch.Tensor]


# --------------------------------------------------------------------------- isolation


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


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _random_like(params: Sequence[torch.Tensor], seed: int) -> Vectors:
    """A random direction from a private generator (the global RNG is not touched)."""
    g = _generator(seed)
    return [torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
            for p in params]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)]).sum()


def _norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return _dot(a, a).sqrt()


# --------------------------------------------------------------------------- Hessian


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
    norm = float(_norm(start))
    if not math.isfinite(norm) or norm == 0.0:
        return Eigen(float("nan"), list(start), 0)
    v = [x / norm for x in start]
    value, prev = float("nan"), None
    res_tol = math.sqrt(tol)
    for i in range(1, max_iters + 1):
        w = matvec(v)
        value = float(_dot(v, w))
        w_norm = float(_norm(w))
        if not math.isfinite(value) or not math.isfinite(w_norm):
            return Eigen(float("nan"), v, i)
        if w_norm <= NEGLIGIBLE:  # (numerically) zero curvature: nothing to converge to
            return Eigen(value, v, i, True, w_norm)
        residual = float(_norm([y - value * x for x, y in zip(v, w, strict=True)]))
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


# --------------------------------------------------------------------------- optimizer rules


@dataclass(frozen=True)
class StabilityRule:
    """An optimizer's edge of stability: ``limit(lr) = constant / lr`` on some sharpness.

    ``preconditioned`` says the sharpness is that of ``P^-1/2 H P^-1/2`` (adaptive methods).
    """

    kind: str  # gd | heavy_ball | nesterov | adam | rmsprop | unknown
    constant: float | None
    preconditioned: bool = False
    weight_decay: float = 0.0  # coupled L2: adds weight_decay to H
    eps: float = 0.0
    beta2: float | None = None  # Adam's second-moment decay (or RMSprop's alpha)

    def limit(self, lr: float) -> float | None:
        """The largest sharpness at which a step of size ``lr`` is still stable."""
        return self.constant / lr if self.constant is not None and lr > 0 else None

    def ceiling(self, sharpness: float | None) -> float | None:
        """The largest stable learning rate for this sharpness."""
        if self.constant is None or sharpness is None or not math.isfinite(sharpness) \
                or sharpness <= 0:
            return None
        return self.constant / sharpness

    @property
    def formula(self) -> str:
        """The limit, as a person reads it."""
        return {"gd": "2/eta on lambda_max",
                "heavy_ball": "(2+2*beta)/((1-dampening)*eta) on lambda_max",
                "nesterov": "(2+2*beta)/((1+2*beta)*eta) on lambda_max",
                "adam": "(2+2*beta1)/((1-beta1)*eta) on lambda_max(P^-1/2 H P^-1/2)",
                "rmsprop": "(2+2*momentum)/eta on lambda_max(P^-1/2 H P^-1/2)",
                }.get(self.kind, "unknown for this optimizer")


def stability_rule(optimizer: torch.optim.Optimizer) -> StabilityRule:
    """The stability rule of a (built-in, or subclass of a built-in) torch optimizer."""
    group = optimizer.param_groups[0]
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    if isinstance(optimizer, torch.optim.AdamW | torch.optim.Adam):
        beta1, beta2 = (float(b) for b in group["betas"])
        decoupled = isinstance(optimizer, torch.optim.AdamW) \
            or bool(group.get("decoupled_weight_decay"))
        return StabilityRule("adam", (2 + 2 * beta1) / (1 - beta1), preconditioned=True,
                             weight_decay=0.0 if decoupled else wd, eps=float(group["eps"]),
                             beta2=beta2)
    if isinstance(optimizer, torch.optim.RMSprop):
        beta = float(group.get("momentum", 0.0) or 0.0)
        return StabilityRule("rmsprop", 2 + 2 * beta, preconditioned=True, weight_decay=wd,
                             eps=float(group["eps"]), beta2=float(group["alpha"]))
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(group.get("momentum", 0.0) or 0.0)
        if beta == 0.0:
            return StabilityRule("gd", 2.0, weight_decay=wd)
        if group.get("nesterov"):
            return StabilityRule("nesterov", (2 + 2 * beta) / (1 + 2 * beta), weight_decay=wd)
        damp = float(group.get("dampening", 0.0) or 0.0)
        constant = (2 + 2 * beta) / (1 - damp) if damp < 1 else None
        return StabilityRule("heavy_ball", constant, weight_decay=wd)
    return StabilityRule("unknown", None)


def preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                   rule: StabilityRule, guess: Vectors | None = None) -> Vectors | None:
    """``P = sqrt(v_hat) + eps`` per parameter, from the optimizer's second-moment state.

    Before the first step there is no state; then ``guess`` (a mean squared gradient) stands
    in for it: Adam's first step uses ``v_hat = g^2`` exactly, RMSprop's ``v = (1 - alpha) g^2``.
    """
    if not rule.preconditioned:
        return None
    out: Vectors = []
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        if rule.kind == "adam" and "exp_avg_sq" in state:
            step = float(state["step"])
            v = state["exp_avg_sq"]
            if "max_exp_avg_sq" in state:
                v = state["max_exp_avg_sq"]
            v_hat = v / (1 - (rule.beta2 or 0.999) ** step) if step > 0 else v
        elif rule.kind == "rmsprop" and "square_avg" in state:
            v_hat = state["square_avg"]
            if "grad_avg" in state:
                v_hat = v_hat - state["grad_avg"].square()
        elif guess is not None:
            v_hat = guess[i] if rule.kind == "adam" else (1 - (rule.beta2 or 0.99)) * guess[i]
        else:
            return None
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
                      seed: int = 0) -> dict[str, Any]:
    """Sharpness (and preconditioned sharpness) of ``model`` on ``batch``, and the EoS ratio.

    Works on any plain ``nn.Module`` (the vectorized engine calls it on an unstacked
    member). ``state`` carries the warm-start eigenvectors from one call to the next (pass the
    same dict every time). Before an adaptive optimizer's first step its missing second
    moment is stood in for by ``second_moment`` or, failing that, by the squared gradient on
    ``first_grad_batch`` (the batch the first step will use). ``want_plain=False`` skips the
    plain sharpness when only the preconditioned one is needed.
    Training is not perturbed (see :func:`preserved`).
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
            top = top_eigen(plain, state.get("vector") or _random_like(params, seed),
                            max_iters, tol)
            state["vector"] = top.vector
        pre_value = None
        if pre is not None:
            ptop = top_eigen(pre, state.get("pvector") or _random_like(params, seed + 1),
                             max_iters, tol)
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
            "loss": significant(loss_value), "hvps": calls}


# --------------------------------------------------------------------------- Lipschitz


def spectral_norms(weights: torch.Tensor) -> list[float]:
    """Largest singular value of each matrix in a ``[..., out, in]`` stack (NaN where the
    matrix is not finite): exact (batched SVD) for matrices up to ``EXACT_SPECTRAL`` on their
    short side, by power iteration beyond."""
    w = weights.detach().float()
    flat = w.reshape(-1, *w.shape[-2:])
    if min(flat.shape[-2:]) > EXACT_SPECTRAL:
        return [spectral_norm(m) for m in flat]
    finite = torch.isfinite(flat).all(dim=(-2, -1))
    sigma = torch.linalg.matrix_norm(torch.where(finite[:, None, None], flat, 0.0), ord=2)
    return [float(x) if ok else float("nan") for x, ok in zip(sigma.tolist(), finite.tolist(),
                                                             strict=True)]


def spectral_norm(weight: torch.Tensor, iters: int = SPECTRAL_ITERS, tol: float = 1e-4,
                  seed: int = 0) -> float:
    """Largest singular value of ``weight`` reshaped to ``[out, -1]``: exact for small
    matrices, else by power iteration."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    if not torch.isfinite(w).all():
        return float("nan")
    if min(w.shape) <= EXACT_SPECTRAL:
        return float(torch.linalg.matrix_norm(w, ord=2))
    v = torch.randn(w.shape[1], generator=_generator(seed)).to(w.device)
    v = v / v.norm().clamp(min=1e-30)
    sigma, prev = 0.0, None
    for _ in range(iters):
        u = w @ v
        u_norm = u.norm()
        if float(u_norm) == 0.0:
            return 0.0
        u = u / u_norm
        v = w.T @ u
        sigma = float(v.norm())
        if sigma == 0.0:
            return 0.0
        v = v / sigma
        if prev is not None and abs(sigma - prev) <= tol * sigma:
            break
        prev = sigma
    return sigma


def lipschitz_bound(model: nn.Module) -> dict[str, Any]:
    """Product of the spectral norms of every trainable weight matrix (parameters with >= 2
    dims).

    Computed in log space (a deep net's product overflows float quickly). Conv kernels count
    as ``[out, in*k*k]`` matrices — a heuristic, not the exact conv operator norm.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    return lipschitz_from([n for n, _ in named], [spectral_norm(p) for _, p in named])


def lipschitz_from(names: Sequence[str], sigmas: Sequence[float]) -> dict[str, Any]:
    """The Lipschitz bound from per-matrix spectral norms (the vectorized engine computes
    those for a whole cohort at once)."""
    layers = []
    log_sum = 0.0
    for name, sigma in zip(names, sigmas, strict=True):
        layers.append({"name": name, "spectral_norm": significant(sigma)})
        log_sum += math.log(sigma) if sigma > 0 and math.isfinite(sigma) else \
            (float("nan") if not math.isfinite(sigma) else float("-inf"))
    log10 = log_sum / math.log(10) if math.isfinite(log_sum) else None
    value = 10 ** log10 if log10 is not None and log10 < 300 else None
    return {"lipschitz": significant(value), "log10_lipschitz": significant(log10),
            "layers": layers}


# --------------------------------------------------------------------------- noise scale


def _grad_sq(model: nn.Module, loss_fn: LossFn, batch: Batch,
             params: Sequence[torch.Tensor]) -> float:
    loss = loss_fn(model, batch).float()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(sum(g.detach().double().square().sum() for g in grads if g is not None))


def noise_scale(model: nn.Module, loss_fn: LossFn, data: TensorData, b_small: int, b_big: int,
                draws: int = NOISE_DRAWS, seed: int = 0) -> dict[str, Any]:
    """``B_simple = tr(Sigma) / |G|^2`` from gradients at two batch sizes.

    McCandlish et al. 2018, appendix A: with ``E|G_B|^2 = |G|^2 + tr(Sigma)/B``, the unbiased
    estimates are ``|G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)`` and
    ``tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)``, averaged over ``draws``
    before the ratio. Batches are drawn *with* replacement, so that the estimators' i.i.d.
    assumption holds exactly on a finite dataset.
    """
    if b_big <= b_small:
        raise ValueError("noise scale needs two different batch sizes")
    params = [p for p in model.parameters() if p.requires_grad]
    g = _generator(20_011 + seed)
    device = next((p.device for p in params), torch.device("cpu"))
    small, big = 0.0, 0.0
    with preserved(model):
        for _ in range(draws):
            small += _grad_sq(model, loss_fn,
                              data.batch(torch.randint(data.n, (b_small,), generator=g)
                                         .to(device)), params)
            big += _grad_sq(model, loss_fn,
                            data.batch(torch.randint(data.n, (b_big,), generator=g).to(device)),
                            params)
    small, big = small / draws, big / draws
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1 / b_small - 1 / b_big)
    b_simple = trace / g2 if g2 > 0 and trace >= 0 else None
    return {"b_small": b_small, "b_big": b_big, "draws": draws, "grad_sq": significant(g2),
            "trace_sigma": significant(trace), "b_simple": significant(b_simple)}


def noise_pair(batch_sizes: Sequence[int], n: int) -> tuple[int, int] | None:
    """The two batch sizes the noise scale is measured at: the sweep's extremes, or a default."""
    lo, hi = min(batch_sizes), max(batch_sizes)
    if hi > lo:
        return lo, hi
    if lo >= 4:
        return max(1, lo // 4), lo
    return (lo, min(n, 4 * lo)) if min(n, 4 * lo) > lo else None


# --------------------------------------------------------------------------- before training


def probe_batch_index(seed: int, n: int, device: torch.device,
                      size: int = PROBE_BATCH) -> torch.Tensor:
    """The fixed curvature batch: the first ``min(n, size)`` of a seeded permutation."""
    return torch.randperm(n, generator=_generator(30_011 + seed))[: min(n, size)].to(device)


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
    from stabcheck.engine.sequential import describe_exception

    try:
        return _init_curvature(problem, seed, data, batch_sizes, curvature_batch)
    except Exception as exc:
        return {"error": describe_exception(exc)}


def _init_curvature(problem: Problem, seed: int, data: TensorData,
                    batch_sizes: Sequence[int], curvature_batch: int) -> dict[str, Any]:
    started = time.perf_counter()
    seed_everything(seed)  # the same initial weights as every probe of this seed
    model = problem.build_model().to(problem.device)
    model.train()
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


# --------------------------------------------------------------------------- during a probe


class CurvatureTracker:
    """Sharpness and EoS ratio of one probe, every ``every`` steps, on its fixed batch.

    The sequential engine calls :meth:`measure` at step 0 (before training) and after every
    ``every``-th step, and :meth:`finish` at the end (which adds the final Lipschitz bound).
    A failure (e.g. a model op with no double backward) stops the tracking, not the probe.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: TensorData,
                 optimizer: torch.optim.Optimizer, seed: int, device: torch.device,
                 batch_size: int = PROBE_BATCH) -> None:
        self.model: nn.Module | None = model
        self.optimizer: torch.optim.Optimizer | None = optimizer
        self.loss_fn = loss_fn
        self.batch = data.batch(probe_batch_index(seed, data.n, device, batch_size))
        self.seed = seed
        self.state: dict[str, Any] = {}
        self.rule = stability_rule(optimizer)
        self.steps: list[int] = []
        self.sharpness: list[float | None] = []
        self.preconditioned: list[float | None] = []
        self.limits: list[float | None] = []
        self.ratios: list[float | None] = []
        self.hvps = 0
        self.time_s = 0.0
        self.error: dict[str, Any] | None = None
        self.lipschitz_init = safe_lipschitz(model)

    def measure(self, step: int, lr: float, model: nn.Module | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> None:
        """Measure before step ``step`` (i.e. after ``step`` optimizer updates) at ``lr``.

        ``model`` and ``optimizer`` stand in for the tracked ones when given (the vectorized
        engine unstacks a member into a fresh model for each measurement).
        """
        if self.error is not None:
            return
        from stabcheck.engine.sequential import describe_exception

        model, optimizer = model or self.model, optimizer or self.optimizer
        if model is None or optimizer is None:
            raise ValueError("CurvatureTracker.measure: released; pass model and optimizer")
        started = time.perf_counter()
        try:
            m = measure_curvature(model, self.loss_fn, self.batch, optimizer, self.state,
                                  lr=lr, seed=self.seed, tol=TRACK_TOL)
        except Exception as exc:
            self.error = describe_exception(exc)
            return
        finally:
            self.time_s += time.perf_counter() - started
        self.steps.append(step)
        self.sharpness.append(m["sharpness"])
        self.preconditioned.append(m["preconditioned"])
        self.limits.append(m["limit"])
        self.ratios.append(m["eos_ratio"])
        self.hvps += int(m["hvps"])

    def release(self) -> None:
        """Drop the model and optimizer (a caller that passes its own to :meth:`measure` and
        :meth:`finish` keeps no second copy alive)."""
        self.model = self.optimizer = None

    def finish(self, tracked: bool = True, model: nn.Module | None = None) -> dict[str, Any]:
        """The probe's curvature record (plain JSON data); only the Lipschitz bounds when
        sharpness tracking is off (``tracked=False``). The final Lipschitz bound is that of
        ``model`` when given, else of the tracked model."""
        model = model or self.model
        final = safe_lipschitz(model) if model is not None else None
        if not tracked:
            return {"lipschitz_init": self.lipschitz_init, "lipschitz_final": final}
        return {"steps": self.steps, "sharpness": self.sharpness,
                "preconditioned": self.preconditioned, "limit": self.limits,
                "eos_ratio": self.ratios, "rule": self.rule.kind,
                "limit_constant": significant(self.rule.constant),
                "probe_batch": _batch_len(self.batch),
                "lipschitz_init": self.lipschitz_init, "lipschitz_final": final,
                "hvps": self.hvps, "time_s": round(self.time_s, 4), "error": self.error}


def drop_after(curvature: dict[str, Any] | None, last_step: int | None) -> None:
    """Forget the measurements of a probe's ``curvature`` record made after ``last_step``
    (its first non-finite step: engines notice that only at the next flush, and measure in
    between on parameters that are no longer finite)."""
    if not curvature or last_step is None or "steps" not in curvature:
        return
    keep = [i for i, step in enumerate(curvature["steps"]) if step <= last_step]
    for name in ("steps", "sharpness", "preconditioned", "limit", "eos_ratio"):
        curvature[name] = [curvature[name][i] for i in keep]


def safe_lipschitz(model: nn.Module) -> float | None:
    """The Lipschitz bound of ``model``, or ``None`` where it cannot be computed."""
    try:
        return lipschitz_bound(model)["lipschitz"]
    except Exception:  # an exotic parameter layout must never fail the probe
        return None


def _batch_len(batch: Batch) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return int(first.shape[0])
