"""Folded attention (:mod:`stabcheck.engine.vectorized.attention`): under ``vmap`` one call for
the whole stack, bitwise what attention gives member by member, gradients included; calls it
cannot fold exactly go to torch's own function."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from stabcheck.engine.vectorized import attention
from stabcheck.engine.vectorized.attention import folded_attention

P, B, H, L, D = 3, 4, 2, 5, 8


def _qkv() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(P, B, H, L, D, generator=g, requires_grad=True) for _ in range(3)]


def _member_by_member(q, k, v, mask, mask_dim, **kw: Any) -> torch.Tensor:
    def one(i: int) -> torch.Tensor:
        m = mask if mask is None or mask_dim is None else mask[i]
        return F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=m, **kw)
    return torch.stack([one(i) for i in range(P)])


def _folded(q, k, v, mask, mask_dim, **kw: Any) -> torch.Tensor:
    def member(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)
    with folded_attention():
        return vmap(member, in_dims=(0, 0, 0, mask_dim))(q, k, v, mask)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    weight = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss that weighs every entry
    return torch.autograd.grad((out * weight).sum(), inputs)


MASKS = {
    "none, causal": (None, None, {"is_causal": True}),
    "float mask per member": (torch.randn(P, B, 1, L, L), 0, {}),
    "mask per member, batch of 1": (torch.randn(P, 1, H, L, L), 0, {}),
    "bool mask per member": (torch.rand(P, B, 1, L, L) > 0.3, 0, {}),
    "shared mask, broadcast": (torch.randn(1, 1, L, L), None, {}),
    "shared mask, one per row": (torch.randn(B, 1, L, L), None, {"scale": 0.5}),
}


@pytest.mark.parametrize("case", list(MASKS))
def test_folded_attention_is_bitwise_the_member_by_member_attention(case: str) -> None:
    mask, mask_dim, kw = MASKS[case]
    if mask is not None and mask.dtype == torch.bool:
        mask[..., 0] = True  # every query row attends somewhere (no NaN rows)
    q, k, v = _qkv()
    ref = _member_by_member(q, k, v, mask, mask_dim, **kw)
    out = _folded(q, k, v, mask, mask_dim, **kw)
    assert torch.equal(out, ref)
    for a, b in zip(_grads(out, [q, k, v]), _grads(ref, [q, k, v]), strict=True):
        assert torch.equal(a, b)


def test_a_mask_that_needs_a_gradient_gets_the_member_by_member_one() -> None:
    # T5's learnable position bias: the fused CPU kernel vmap picks cannot give it a gradient.
    q, k, v = _qkv()
    bias = torch.randn(P, 1, H, L, L, requires_grad=True)
    ref = _member_by_member(q, k, v, bias, 0)
    out = _folded(q, k, v, bias, 0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for a, b in zip(_grads(out, [q, bias]), _grads(ref, [q, bias]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_calls_it_cannot_fold_exactly_go_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    folds: list[int] = []
    real = attention._FoldedAttention.vmap

    def counted(*args: Any) -> Any:
        folds.append(1)
        return real(*args)
    monkeypatch.setattr(attention._FoldedAttention, "vmap", staticmethod(counted))
    q, k, v = _qkv()
    _folded(q, k, v, None, None)
    assert folds == [1]
    # 3-D inputs, a batch of one broadcast against the others, no vmap.
    with folded_attention():
        vmap(lambda q, k, v: F.scaled_dot_product_attention(q[0], k[0], v[0]))(q, k, v)
        vmap(lambda q, k, v: F.scaled_dot_product_attention(q[:1], k, v))(q, k, v)
        plain = F.scaled_dot_product_attention(q[0], k[0], v[0])
    assert folds == [1]
    assert torch.equal(plain, F.scaled_dot_product_attention(q[0], k[0], v[0]))


def test_dropout_in_folded_attention_draws_a_mask_per_member() -> None:
    q, k, v = (x.detach()[:1].expand(P, *x.shape[1:]) for x in _qkv())  # identical members
    attend = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)  # noqa: E731
    torch.manual_seed(0)
    with folded_attention():
        out = vmap(attend, randomness="different")(q, k, v)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])
    torch.manual_seed(0)  # the same seed, the same masks: reproducible
    with folded_attention():
        assert torch.equal(vmap(attend, randomness="different")(q, k, v), out)
        with pytest.raises(RuntimeError, match="randomness"):
            vmap(attend, randomness="same")(q, k, v)


def test_torch_gets_its_function_back_even_when_the_forward_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), folded_attention():
        assert F.scaled_dot_product_attention is attention.scaled_dot_product_attention
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is attention._TORCH_SDPA


def test_grouped_query_attention_folds_too() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(P, B, 4, L, D, generator=g, requires_grad=True)
    k, v = (torch.randn(P, B, 2, L, D, generator=g, requires_grad=True) for _ in range(2))
    ref = _member_by_member(q, k, v, None, None, enable_gqa=True)
    out = _folded(q, k, v, None, None, enable_gqa=True)
    assert torch.equal(out, ref)
    for a, b in zip(_grads(out, [q, k, v]), _grads(ref, [q, k, v]), strict=True):
        assert torch.equal(a, b)
