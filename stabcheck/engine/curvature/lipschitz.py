"""A Lipschitz upper bound of a model: the product of the spectral norms of its weight
matrices.

Conv kernels are reshaped to ``[out, in * k * k]``: that is a heuristic stand-in for the conv
operator norm, not the exact value. The product bounds a plain feed-forward chain with
1-Lipschitz activations; residual connections, attention and normalisation layers are not
bounded by it, so read it as a trend indicator (how much the weights' scale grew during a
probe), not as a certificate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stabcheck.engine.curvature.linalg import generator
from stabcheck.records import significant

SPECTRAL_ITERS = 50  # power-iteration steps for one weight matrix's spectral norm
EXACT_SPECTRAL = 512  # matrices up to this size on their short side get an exact SVD norm


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
    v = torch.randn(w.shape[1], generator=generator(seed)).to(w.device)
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


def safe_lipschitz(model: nn.Module) -> float | None:
    """The Lipschitz bound of ``model``, or ``None`` where it cannot be computed."""
    try:
        return lipschitz_bound(model)["lipschitz"]
    except Exception:  # an exotic parameter layout must never fail the probe
        return None
