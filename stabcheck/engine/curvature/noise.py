"""The gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` (McCandlish et al. 2018, "An
empirical model of large-batch training", appendix A)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stabcheck.engine.curvature.linalg import generator, preserved
from stabcheck.problem import Batch, LossFn, TensorData
from stabcheck.records import significant

NOISE_DRAWS = 8  # gradient pairs averaged for the noise-scale estimate


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
    g = generator(20_011 + seed)
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
