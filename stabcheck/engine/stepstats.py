"""One sequential probe's per-step statistics: a few norms per step, the columns at flush.

A bare training step is forward, backward, optimizer step. What an instrumented step adds is
kept to a handful of fused ops that stay on the device (no ``.item()``, no host sync, no
per-step allocation beyond what the ops return):

* before the update, the gradient norm of every parameter (``torch._foreach_norm``, float64
  accumulation: a float32 sum of squares overflows once elements pass ~1e19, which would
  report a finite, exploding gradient as infinite) and a copy of all the weights into one
  flat buffer allocated once (one ``torch.cat``);
* after it, the new weights into a second flat buffer, the update as their difference (in
  place), the two global norms (float64, like the gradient's), and *one* ``torch.stack`` of
  these norms and the loss into the step's row of a raw ``[steps, n_params + 4]`` float64
  buffer (:data:`RAW_PARTS`). On a CPU every op costs microseconds of dispatch however small
  its tensors, so whole-model ops on the flat buffers beat one op per parameter.

Everything else in :data:`~stabcheck.engine.instruments.STAT_COLUMNS` and the per-layer
gradient norms is arithmetic on those norms, done at flush time for the whole chunk at once
(:meth:`NormBuffer.flush`): the global and per-layer gradient norms, the update ratio (the
update's norm over the norm of the weights it moved, which each row carries), the new weights'
norm, whether clipping scaled the gradient down, whether fp16 loss scaling skipped the step.
The values are the ones the step-time formulas gave: the same float64 norms, summed the same
way.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from stabcheck.engine.instruments import CLIP_EPS, COL, LayerMap
from stabcheck.engine.stats import StatBuffer

# The raw row of one step, in order: one gradient norm per parameter, then the global norms
# of the update, of the weights after it and of the weights before it, then the loss.
RAW_PARTS = ("grad", "update", "weight", "weight_before", "loss")


class NormBuffer(StatBuffer):
    """A :class:`StatBuffer` for one probe whose rows are derived, at flush, from raw norms
    recorded by :meth:`grad_norms`, :meth:`keep_weights` and :meth:`record`.

    ``clip_norms`` (``[steps, k]``) are the norms clipping compared ``grad_clip`` with, when
    those are not the global gradient norm (a custom step clips per optimizer); a step counts
    as clipped when any of them was scaled down.
    """

    def __init__(self, params: Sequence[torch.Tensor], layers: LayerMap, steps: int,
                 device: torch.device, grad_clip: float | None, loss_scaling: bool) -> None:
        super().__init__(steps, len(layers.names), device)
        self.params = list(params)
        self.grad_clip, self.loss_scaling = grad_clip, loss_scaling
        self.layer_index = layers.index_tensor(device)
        self.clip_norms: torch.Tensor | None = None
        n = len(self.params)
        self.raw = torch.full((steps, n + 4), float("nan"), dtype=torch.float64, device=device)
        self.rows = self.raw.unbind(0)  # one view per step, made once
        # Flat views of the weights (optimizers update them in place, so the views stay
        # valid; see :meth:`_flat`) and the weights before and after the update, flat,
        # overwritten every step.
        self._ptrs: list[int] = []
        self._views: list[torch.Tensor] = []
        self._viewable = True
        numel = sum(p.numel() for p in self.params)
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in self.params),
                                 torch.float32 if not self.params else self.params[0].dtype)
        self.before = torch.empty(numel, dtype=dtype, device=device)
        self.after = torch.empty_like(self.before)
        # Stands in for the gradient of a parameter the step did not reach (norm 0, as if
        # it were left out of the sums).
        self.no_grad = torch.zeros((), device=device)
        self.weight_norm = torch.zeros((), dtype=torch.float64, device=device)
        self.weights_loaded()

    def _flat(self) -> list[torch.Tensor]:
        """The weights as flat views, remade when a parameter's storage changed (code that
        assigns ``p.data``) and copied flat where a weight cannot be viewed so (a
        non-contiguous one, e.g. a ``channels_last`` convolution)."""
        ptrs = [p.data_ptr() for p in self.params]
        if ptrs != self._ptrs or not self._viewable:
            self._views = [p.detach().view(-1) if p.is_contiguous() else p.detach().reshape(-1)
                           for p in self.params]
            self._viewable = all(p.is_contiguous() for p in self.params)
            self._ptrs = ptrs
        return self._views

    def weights_loaded(self) -> None:
        """Measure the current weights: the next step's update ratio divides by their norm.
        Call after the weights were set other than by a step (restored, copied in)."""
        with torch.no_grad():
            torch.cat(self._flat(), out=self.after)
            self.weight_norm = torch.linalg.vector_norm(self.after, dtype=torch.float64)

    def grad_norms(self, params: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per-parameter float64 gradient norms (0 for a parameter without a gradient)."""
        grads = [self.no_grad if p.grad is None else p.grad for p in params or self.params]
        return list(torch._foreach_norm(grads, 2, dtype=torch.float64))

    def keep_weights(self) -> None:
        """Copy the weights, to measure the update after the optimizer step."""
        torch.cat(self._flat(), out=self.before)

    def record(self, step: int, grad_norms: Sequence[torch.Tensor], loss: torch.Tensor) -> None:
        """After the update: its norm, the new weights' norm and the step's row (one stack)."""
        torch.cat(self._flat(), out=self.after)
        update = self.before.sub_(self.after)  # before - after: the update, negated
        update_norm = torch.linalg.vector_norm(update, dtype=torch.float64)
        weight_norm = torch.linalg.vector_norm(self.after, dtype=torch.float64)
        # All float64: a stack of mixed dtypes takes a much slower path.
        torch.stack([*grad_norms, update_norm, weight_norm, self.weight_norm,
                     loss.detach().double()], out=self.rows[step])
        self.weight_norm = weight_norm

    def flush(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Derive the columns of steps ``[flushed, upto)`` from their raw norms (a few
        whole-chunk ops), then copy them to the host (one sync)."""
        lo = self.flushed
        if upto > lo:
            with torch.no_grad():
                self._derive(lo, upto)
        return super().flush(upto)

    def _derive(self, lo: int, upto: int) -> None:
        n = len(self.params)
        grad, update, weight, before, loss = self.raw[lo:upto].split([n, 1, 1, 1, 1], dim=1)
        grad_sq = grad.square()
        layer_sq = torch.zeros(upto - lo, self.n_layers, dtype=torch.float64,
                               device=self.device).index_add_(1, self.layer_index, grad_sq)
        grad_norm = grad_sq.sum(1).sqrt()
        stats = self.stats[lo:upto]
        stats[:, COL["loss"]] = loss[:, 0].float()
        stats[:, COL["grad_norm"]] = grad_norm.float()
        # ||Δθ|| / ||θ||: the step's size relative to the weights it moved.
        stats[:, COL["update_ratio"]] = (update / before.clamp(min=1e-30))[:, 0].float()
        stats[:, COL["param_norm"]] = weight[:, 0].float()
        # Clipped as torch.nn.utils.clip_grad_norm_ decides: scale clip / (norm + eps) < 1.
        clipped = torch.zeros(upto - lo, device=self.device)
        if self.grad_clip is not None:
            norms = grad_norm[:, None] if self.clip_norms is None else self.clip_norms[lo:upto]
            clipped = (self.grad_clip / (norms + CLIP_EPS) < 1.0).any(dim=1).float()
        stats[:, COL["clipped"]] = clipped
        # fp16: GradScaler skips the step exactly when a gradient overflowed (non-finite).
        skipped = (~torch.isfinite(grad_norm)).float() if self.loss_scaling \
            else torch.zeros(upto - lo, device=self.device)
        stats[:, COL["skipped"]] = skipped
        self.layers[lo:upto] = layer_sq.sqrt().float()

