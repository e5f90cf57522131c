"""Attention under ``vmap`` as one call: the members of the stack folded into the batch.

torch has no batching rule for the fused CPU attention kernel
(``aten::_scaled_dot_product_flash_attention_for_cpu``), so under ``vmap`` each call runs once
per member, and the backward of every per-member slice writes into a zero tensor the size of
the whole stack: on the corpus's GPT-2 and BERT this was a fifth to a third of a stacked step.
Attention treats every (batch, head) row on its own, so the stack's members can instead be
folded into the batch dimension: ``[P, B, H, L, D]`` becomes ``[P * B, H, L, D]``, one call,
one backward. Per row the kernel does the same arithmetic in the same order, so the result is
bitwise the per-member one (``tests/engine/test_vectorized_attention.py``).

:func:`folded_attention` swaps ``torch.nn.functional.scaled_dot_product_attention`` for the
folding version while the stacked forward runs (model code looks it up at call time, as
Hugging Face ``transformers`` does). Dropout inside attention draws one mask for the folded
batch, which is an independent mask per member, as ``vmap(randomness="different")`` draws them
(not the same numbers: masks under ``vmap`` never are the sequential engine's). Calls it cannot
fold exactly — inputs that are not the usual 4-D ``[batch, heads, length, dim]``, a batch of
one broadcast against the others, or a call outside ``vmap`` — go to torch's own function
unchanged. Only for the summed backward (``grad_mode="sum"``): there ``vmap`` is the
one transform active, and autograd records the folded call like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch._C._functorch import is_batchedtensor

_TORCH_SDPA = F.scaled_dot_product_attention


def _fold(x: torch.Tensor, bdim: int | None, members: int) -> torch.Tensor:
    """``x`` with the stack's dimension first and merged into its batch dimension."""
    x = x.movedim(bdim, 0) if bdim is not None else x.expand(members, *x.shape)
    return x.reshape(members * x.shape[1], *x.shape[2:])


def _fold_mask(mask: torch.Tensor | None, bdim: int | None, members: int, batch: int
               ) -> torch.Tensor | None:
    """The mask folded like the query (``batch`` rows per member), or as it is where it is
    the same for every member and every row (it broadcasts over the folded batch then)."""
    if mask is None:
        return None
    if bdim is None and (mask.dim() < 4 or mask.shape[0] == 1):
        return mask
    mask = mask.movedim(bdim, 0) if bdim is not None else mask.expand(members, *mask.shape)
    mask = mask.expand(members, batch, *mask.shape[2:])  # a batch dimension of 1 broadcasts
    return mask.reshape(members * batch, *mask.shape[2:])


def _gqa(enable_gqa: bool) -> dict[str, bool]:
    """``enable_gqa`` only where it was asked for (torch < 2.5 has no such argument)."""
    return {"enable_gqa": True} if enable_gqa else {}


class _FoldedAttention(torch.autograd.Function):
    """Attention whose ``vmap`` rule is one call over the folded stack (see the module)."""

    generate_vmap_rule = False

    @staticmethod
    def forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None, dropout_p: float, is_causal: bool,
                scale: float | None, enable_gqa: bool) -> torch.Tensor:
        return _TORCH_SDPA(query, key, value, attn_mask=mask, dropout_p=dropout_p,
                           is_causal=is_causal, scale=scale, **_gqa(enable_gqa))

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # never reached: used under vmap only
        raise RuntimeError("folded attention is differentiated through its vmap rule only")

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, mask: torch.Tensor | None, dropout_p: float, is_causal: bool,
             scale: float | None, enable_gqa: bool) -> tuple[torch.Tensor, int]:
        if dropout_p and info.randomness != "different":
            # One mask drawn for the folded batch is a different mask per member: right for
            # randomness="different" (the engine's), wrong for "same", refused under "error".
            raise RuntimeError(f"folded attention with dropout under vmap(randomness="
                               f"{info.randomness!r}): only 'different' is supported")
        members = info.batch_size
        folded = _fold(query, in_dims[0], members)
        mask = _fold_mask(mask, in_dims[3], members, folded.shape[0] // members)
        out = _TORCH_SDPA(folded, _fold(key, in_dims[1], members),
                          _fold(value, in_dims[2], members), attn_mask=mask,
                          dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                          **_gqa(enable_gqa))
        return out.view(members, -1, *out.shape[1:]), 0


def _foldable(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attn_mask: torch.Tensor | None) -> bool:
    """Whether the call can be folded exactly (see the module); shapes are per member."""
    tensors = [query, key, value] + ([attn_mask] if attn_mask is not None else [])
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    if not (query.dim() == key.dim() == value.dim() == 4
            and query.shape[0] == key.shape[0] == value.shape[0]):
        return False  # SDPA broadcasting a batch of 1 across the others: not foldable
    if attn_mask is not None and (attn_mask.dim() > 4 or (
            is_batchedtensor(attn_mask) and (attn_mask.dim() != 4
                                             or attn_mask.shape[0] not in (1, query.shape[0])))):
        return False
    return any(is_batchedtensor(t) for t in tensors)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention``, folded when under ``vmap``."""
    if not _foldable(query, key, value, attn_mask):
        return _TORCH_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                           is_causal=is_causal, scale=scale, **_gqa(enable_gqa))
    out: torch.Tensor = _FoldedAttention.apply(query, key, value, attn_mask, dropout_p,
                                               is_causal, scale, enable_gqa)
    return out


@contextlib.contextmanager
def folded_attention() -> Iterator[None]:
    """While the block runs, ``F.scaled_dot_product_attention`` folds the stack (module doc)."""
    F.scaled_dot_product_attention = scaled_dot_product_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _TORCH_SDPA
