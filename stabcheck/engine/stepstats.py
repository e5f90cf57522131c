"""One sequential probe's per-step statistics: a few norms per step, the columns at flush.

A bare training step is forward, backward, optimizer step. What an instrumented step adds is
kept to a handful of fused ops (no per-step allocation beyond what the ops return):

* before the update, the norm of every parameter's gradient (one ``torch._foreach_norm``);
* after it, a flat copy of the new weights (one ``torch.cat``) into one of two flat buffers
  allocated once, the other holding the copy taken after the step before; the update as
  their difference (in place, over that older copy) and the norms of both (one reduction
  over the two buffers, by rows), written with the loss into the step's row of a raw float64
  ``[steps, n_params + 4]`` buffer (:data:`RAW_PARTS`). On a CPU every op costs microseconds
  of dispatch however small its tensors, so whole-model ops on the flat buffers beat one op
  per parameter.

On a CPU the norms are float32, as ``torch.nn.utils.clip_grad_norm_`` takes them, and they
reach the raw buffer as Python floats (``.item()``: CPU tensors are in host memory, so this
waits for nothing, and the row is written through a NumPy view, without a ``torch.stack``).
Each is checked on the way: a float32 sum of squares equals the float64 one to float32
rounding unless it overflows (elements past ~1e19, which would report a finite, exploding
gradient as infinite), loses digits to subnormal squares (elements below ~1e-19) or runs over
too many elements (see ``_LONGEST``), and a norm outside those bounds
(:func:`exact_in_float32`) is taken again in float64. Float32 norms cost
a fraction of float64 ones, which convert their input to float64 first. On another device a
host read would wait for the device, so there the norms are float64 tensors, stacked into the
row on the device. Gradients that are clipped are measured in float64 everywhere
(:meth:`NormBuffer.clip_grads`): the clipping scale comes from their total.

Everything else in :data:`~stabcheck.engine.instruments.STAT_COLUMNS` and the per-layer
gradient norms is arithmetic on those norms, done in float64 at flush time for the whole chunk
at once (:meth:`NormBuffer.flush`): the global and per-layer gradient norms, the update ratio
(the update's norm over the norm of the weights it moved, which each row carries), the new
weights' norm, whether clipping scaled the gradient down, whether fp16 loss scaling skipped
the step. The values are those of the former float64 step-time formulas, to float32 rounding.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from stabcheck.engine.instruments import CLIP_EPS, COL, LayerMap
from stabcheck.engine.stats import StatBuffer

# The raw row of one step, in order: one gradient norm per parameter, then the global norms
# of the update, of the weights after it and of the weights before it, then the loss.
RAW_PARTS = ("grad", "update", "weight", "weight_before", "loss")

# A norm as the buffer holds it until it is written: a Python float on a CPU, a 0-d float64
# tensor on another device.
Norm = float | torch.Tensor

# A float32 norm of n elements is its float64 value to float32 rounding when its sum of
# squares is far from float32's largest value (2^128) and from the subnormal squares (below
# 2^-126, each off by up to 2^-150): norm <= 2^50, and norm >= sqrt(n) * 2^-60, where the
# subnormals' error is below 2^-30 of it; and when n is short: torch's CPU kernel adds long
# runs of squares one after another, so its error grows with n (measured against float64:
# 2e-7 at 7e4 elements, 1e-5 at 1e6, 4e-4 at 1e7). The flat weight buffers are therefore
# reduced by rows of _ROW elements, whose norms are then summed in float64.
_HUGE = 2.0 ** 50
_TINY = 2.0 ** -60
_LONGEST = 2 ** 16
_ROW = 2 ** 12


def in_float32_range(norm: float, numel: int) -> bool:
    """Whether a float32 norm of ``numel`` elements neither overflowed nor lost digits to
    subnormal squares (a NaN norm is NaN in float64 too: some element is NaN)."""
    return norm != norm or math.sqrt(numel) * _TINY <= norm <= _HUGE


def exact_in_float32(norm: float, numel: int) -> bool:
    """Whether a float32 norm of ``numel`` elements equals the float64 one to float32
    rounding."""
    return numel <= _LONGEST and in_float32_range(norm, numel)


class NormBuffer(StatBuffer):
    """A :class:`StatBuffer` for one probe whose rows are derived, at flush, from raw norms
    recorded by :meth:`grad_norms` (or :meth:`clip_grads`) and :meth:`record`.

    ``clip_norms`` (``[steps, k]``) are the norms clipping compared ``grad_clip`` with, when
    those are not the global gradient norm (a custom step clips per optimizer); a step counts
    as clipped when any of them was scaled down.
    """

    def __init__(self, params: Sequence[torch.Tensor], layers: LayerMap, steps: int,
                 device: torch.device, grad_clip: float | None, loss_scaling: bool,
                 on_host: bool | None = None) -> None:
        super().__init__(steps, len(layers.names), device)
        self.params = list(params)
        self.grad_clip, self.loss_scaling = grad_clip, loss_scaling
        self.layer_index = layers.index_tensor(device)
        self.clip_norms: torch.Tensor | None = None
        # Norms read on the host (float32, checked) or kept on the device (float64): see the
        # module's docstring; by default, on the host exactly when the device is the CPU.
        self.on_host = device.type == "cpu" if on_host is None else on_host
        n = len(self.params)
        self.raw = torch.full((steps, n + 4), float("nan"), dtype=torch.float64, device=device)
        self.host_raw = self.raw.numpy() if self.on_host else None
        self.rows = self.raw.unbind(0)  # one view per step, made once
        # Flat views of the weights (optimizers update them in place, so the views stay
        # valid; see :meth:`_flat`) and two flat copies of them, taken in turns after each
        # update: the weights before it are the copy taken after the step before (or when
        # the weights were loaded), which the update then overwrites.
        self._ptrs: list[int] = []
        self._views: list[torch.Tensor] = []
        self._viewable = True
        numel = sum(p.numel() for p in self.params)
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in self.params),
                                 torch.float32 if not self.params else self.params[0].dtype)
        # Both copies in one [2, rows, _ROW] tensor, zero-padded: one reduction by rows
        # measures both (see _ROW).
        self.pair = torch.zeros(2, max(1, -(-numel // _ROW)), _ROW, dtype=dtype, device=device)
        self.copies = (self.pair[0].view(-1)[:numel], self.pair[1].view(-1)[:numel])
        self.current = 0  # which copy holds the weights as they are now
        # The gradient norm of a parameter the step did not reach (as if it were left out
        # of the sums).
        self.zero_norm: Norm = 0.0 if self.on_host \
            else torch.zeros((), dtype=torch.float64, device=device)
        self.weight_norm: Norm = self.zero_norm
        self.weights_loaded()

    def norms(self, tensors: list[torch.Tensor]) -> list[Norm]:
        """The L2 norm of each tensor: on a CPU float32 ones, read and checked on the host and
        taken again in float64 where float32 is not exact; elsewhere float64 tensors."""
        if not self.on_host:
            return list(torch._foreach_norm(tensors, 2, dtype=torch.float64))
        values = [norm.item() for norm in torch._foreach_norm(tensors, 2)]
        for i, value in enumerate(values):
            if not exact_in_float32(value, tensors[i].numel()):
                values[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64).item()
        return list(values)

    def _copy_norms(self) -> list[Norm]:
        """The norms of the two flat copies (on a CPU by rows, summed in float64)."""
        if not self.on_host:
            return list(torch._foreach_norm(list(self.copies), 2, dtype=torch.float64))
        by_rows = torch.linalg.vector_norm(self.pair, dim=2).tolist()
        norms: list[Norm] = []
        for copy, rows in zip(self.copies, by_rows, strict=True):
            norm = math.sqrt(sum(row * row for row in rows))
            if not in_float32_range(norm, copy.numel()):
                norm = torch.linalg.vector_norm(copy, dtype=torch.float64).item()
            norms.append(norm)
        return norms

    def total(self, norms: Sequence[Norm]) -> Norm:
        """The norm of all the tensors that ``norms`` are the norms of."""
        if self.on_host:  # float64, as the device's; NaN when any is NaN
            return math.sqrt(sum(norm * norm for norm in norms))
        return torch.linalg.vector_norm(torch.stack(norms))  # type: ignore[arg-type]

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
        """Measure the current weights: the next step's update is measured from them and its
        ratio divides by their norm. Call after the weights were set other than by a step
        (restored, copied in): else the next update would count that change too."""
        with torch.no_grad():
            torch.cat(self._flat(), out=self.copies[self.current])
            self.weight_norm = self._copy_norms()[self.current]

    def _with_zeros(self, grads: list[torch.Tensor | None], norms: list[Norm]) -> list[Norm]:
        """``norms`` of the gradients that are there, with 0 for those that are not."""
        if len(norms) == len(grads):
            return norms
        found = iter(norms)
        return [self.zero_norm if g is None else next(found) for g in grads]

    def grad_norms(self, params: Sequence[torch.Tensor] | None = None) -> list[Norm]:
        """Per-parameter gradient norms (0 for a parameter without a gradient)."""
        grads = [p.grad for p in params or self.params]
        return self._with_zeros(grads, self.norms([g for g in grads if g is not None]))

    def clip_grads(self, max_norm: float, params: Sequence[torch.Tensor] | None = None
                   ) -> tuple[list[Norm], torch.Tensor]:
        """Clip as ``torch.nn.utils.clip_grad_norm_`` does (scale by clip / (norm + eps) when
        that is below 1), by the float64 norm of the gradients: a float32 one would overflow
        for an exploding gradient, and its rounding, through the scale's, would move the whole
        run off the former reference's. Returns the per-parameter norms and their total."""
        params = params or self.params
        grads = [p.grad for p in params]
        norms = list(torch._foreach_norm([g for g in grads if g is not None], 2,
                                         dtype=torch.float64))
        total = torch.linalg.vector_norm(torch.stack(norms))
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        values: list[Norm] = [norm.item() for norm in norms] if self.on_host else list(norms)
        return self._with_zeros(grads, values), total

    def record(self, step: int, grad_norms: Sequence[Norm], loss: torch.Tensor) -> None:
        """After the update: its norm, the new weights' norm and the step's row."""
        old, new = self.current, 1 - self.current
        torch.cat(self._flat(), out=self.copies[new])
        self.current = new
        self.copies[old].sub_(self.copies[new])  # before - after: the update, negated
        norms = self._copy_norms()
        update_norm, weight_norm = norms[old], norms[new]
        if self.host_raw is not None:
            self.host_raw[step] = [*grad_norms, update_norm, weight_norm, self.weight_norm,
                                   loss.item()]
        else:  # one stack, all float64 (a stack of mixed dtypes takes a much slower path)
            torch.stack([*grad_norms, update_norm, weight_norm, self.weight_norm,  # type: ignore[list-item]
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
