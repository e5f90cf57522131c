"""One LSTM layer (one direction) of every stacked member at once, as one autograd Function
with its backpropagation through time written out.

Written with one ``vmap``-ed operation per gate and time step (:mod:`.rnn`'s recurrence for
the GRU and RNN), the LSTM paid for ``vmap``'s layouts more than for its arithmetic: its input
projection became a batched matmul of ``members x time steps`` tiny products, its gate
gradients a strided ``cat`` per time step, its output gradient a zero-filled tensor, and
every step's pointwise operations an autograd node each. Here the members are an explicit
leading dimension (``vmap``'s rule, :meth:`_LSTMLayer.vmap`, moves them there) and a layer
costs one matmul for the input projections of every time step, one ``baddbmm`` per step
for the recurrence, the gates' pointwise operations on preallocated buffers, and in the
backward pass one ``bmm`` per step for the hidden state's gradient and one for each weight
gradient over all time steps at once. The equations are torch's (gate order i, f, g, o).

Double backward (a gradient taken with ``create_graph=True``, as ``torch.func.grad`` does)
recomputes the layer through :mod:`.recurrence`'s differentiable loop, so that higher
derivatives are exact; the stacked engine's own step never needs them.
"""

from __future__ import annotations

from typing import Any

import torch

from stabcheck.engine.vectorized import recurrence

Tensor = torch.Tensor


def _forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
             bias: Tensor | None, reverse: bool) -> tuple[Tensor, ...]:
    """``x`` ``[M, L, N, F]``, states ``[M, N, H]``, weights ``[M, 4H, F]``/``[M, 4H, H]``,
    ``bias`` ``[M, 4H]`` (``b_ih + b_hh``): ``out [M, L, N, H], h_n, c_n`` and what the
    backward pass reads (``acts``: the gates after their nonlinearity, ``cells``: ``c_t``,
    ``tanh_c``: ``tanh(c_t)``, all ``[M, L, N, ...]``)."""
    M, L, N, _ = x.shape
    H = w_hh.shape[-1]
    flat = x.reshape(M, L * N, x.shape[-1])
    w_t = w_ih.transpose(1, 2)
    # Every step's input projection at once; each step then adds its recurrent term and
    # applies the gates' nonlinearities in place, so this one tensor ends as the activations
    # (a step touches only its own slice: fewer passes over memory than new tensors).
    acts = (torch.bmm(flat, w_t) if bias is None
            else torch.baddbmm(bias.unsqueeze(1), flat, w_t)).view(M, L, N, 4 * H)
    w_hh_t = w_hh.transpose(1, 2)
    out = x.new_empty(M, L, N, H)
    cells = x.new_empty(M, L, N, H)
    tanh_c = x.new_empty(M, L, N, H)
    h, c = h0, c0
    for t in (range(L - 1, -1, -1) if reverse else range(L)):
        a = acts[:, t].baddbmm_(h, w_hh_t)
        i, f, g, o = a.chunk(4, dim=-1)
        a[..., :2 * H].sigmoid_()
        g.tanh_()
        o.sigmoid_()
        c = torch.addcmul(f * c, i, g, out=cells[:, t])
        h = torch.mul(o, torch.tanh(c, out=tanh_c[:, t]), out=out[:, t])
    return out, h.clone(), c.clone(), acts, cells, tanh_c


def _backward(saved: tuple[Tensor, ...], reverse: bool, d_out: Tensor | None,
              d_hn: Tensor | None, d_cn: Tensor | None, need_x: bool = True
              ) -> tuple[Tensor | None, ...]:
    """Backpropagation through time: gradients of ``x, h0, c0, w_ih, w_hh, bias`` (``x``'s
    only where ``need_x``: the first layer's input is data).

    The gradients of the gate pre-activations overwrite the activations step by step (a
    step's activations are read only by that step), so ``acts`` cannot be read twice: a
    second backward through one graph (``retain_graph``) fails on its version counter."""
    x, h0, c0, w_ih, w_hh, bias, out, acts, cells, tanh_c = saved
    M, L, N, _ = x.shape
    H = w_hh.shape[-1]
    dh = d_hn if d_hn is not None else h0.new_zeros(M, N, H)
    dc = d_cn if d_cn is not None else c0.new_zeros(M, N, H)
    first = L - 1 if reverse else 0
    for t in (range(L) if reverse else range(L - 1, -1, -1)):
        if d_out is not None:
            dh = dh + d_out[:, t]
        a, tc = acts[:, t], tanh_c[:, t]
        i, f, g, o = a.chunk(4, dim=-1)
        c_prev = c0 if t == first else cells[:, t + 1 if reverse else t - 1]
        dc = torch.addcmul(dc, dh * o, 1 - tc * tc)
        d_f = dc * c_prev
        d_i = dc * g
        g.mul_(g).neg_().add_(1).mul_(dc).mul_(i)      # tanh': d_g = dc i (1 - g^2)
        i.addcmul_(i, i, value=-1).mul_(d_i)           # sigmoid': d_i = dc g i (1 - i)
        dc = dc * f
        f.addcmul_(f, f, value=-1).mul_(d_f)           # d_f = dc c_{t-1} f (1 - f)
        o.addcmul_(o, o, value=-1).mul_(dh).mul_(tc)   # d_o = dh tanh(c) o (1 - o)
        dh = torch.bmm(a, w_hh)
    flat_g = acts.view(M, L * N, 4 * H)
    # h_{t-1} of every step in the order of acts: the previous output in processing order.
    h_prev = (torch.cat([out[:, 1:], h0.unsqueeze(1)], dim=1) if reverse
              else torch.cat([h0.unsqueeze(1), out[:, :-1]], dim=1))
    # Weight gradients over all time steps at once, as (input^T gradient)^T: several times
    # cheaper than gradient^T input, whose left operand is the long transposed one.
    d_w_hh = torch.bmm(h_prev.reshape(M, L * N, H).transpose(1, 2), flat_g).transpose(1, 2)
    flat_x = x.reshape(M, L * N, x.shape[-1])
    d_w_ih = torch.bmm(flat_x.transpose(1, 2), flat_g).transpose(1, 2)
    d_x = torch.bmm(flat_g, w_ih).view_as(x) if need_x else None
    d_bias = flat_g.sum(dim=1) if bias is not None else None
    return d_x, dh, dc, d_w_ih, d_w_hh, d_bias


def _exact_double_backward(inputs: tuple[Any, ...], grads: tuple[Tensor | None, ...]
                           ) -> tuple[Tensor | None, ...]:
    """The input gradients as a differentiable function of the inputs (``create_graph``):
    the layer recomputed through :func:`_reference` and differentiated by autograd."""
    tensors = [(k, t) for k, t in enumerate(inputs) if isinstance(t, Tensor) and
               t.requires_grad]
    with torch.enable_grad():
        outs = _reference(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if g is not None]
        found = torch.autograd.grad([o for o, _ in pairs], [t for _, t in tensors],
                                    [g for _, g in pairs], create_graph=True,
                                    allow_unused=True)
    result: list[Tensor | None] = [None] * len(inputs)
    for (k, _), value in zip(tensors, found, strict=True):
        result[k] = value
    return tuple(result)


def _reference(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               bias: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The same layer through :mod:`.recurrence`'s differentiable loop, member by member."""
    def one(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
            *bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, h, c = recurrence.sequence("LSTM", x, h0, c0,
                                        (w_ih, w_hh, bias[0] if bias else None, None), reverse)
        assert c is not None
        return out, h, c
    result: tuple[Tensor, Tensor, Tensor] = torch.func.vmap(one)(
        x, h0, c0, w_ih, w_hh, *([] if bias is None else [bias]))
    return result


def _input_grads(saved: tuple[Tensor, ...], reverse: bool, grads: tuple[Tensor | None, ...],
                 need_x: bool) -> tuple[Tensor | None, ...]:
    """The gradients of ``x, h0, c0, w_ih, w_hh, bias, reverse`` (``None``) from what
    :func:`_forward` saved, the members leading."""
    if torch.is_grad_enabled():  # a gradient of this gradient will be taken
        return _exact_double_backward((*saved[:6], reverse), grads)
    d_out, d_hn, d_cn = grads
    return (*_backward((saved[0].contiguous(), *saved[1:]), reverse, d_out, d_hn, d_cn,
                       need_x), None)


def _lead(t: Tensor | None) -> Tensor | None:
    return t.unsqueeze(0) if t is not None else None


def _unlead(t: Tensor | None) -> Tensor | None:
    return t.squeeze(0) if t is not None else None


class _StackedLSTM(torch.autograd.Function):
    """:func:`_forward` / :func:`_backward` over an explicit leading member dimension."""

    @staticmethod
    def forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                bias: Tensor | None, reverse: bool) -> tuple[Tensor, ...]:
        return _forward(x.contiguous(), h0, c0, w_ih, w_hh, bias, reverse)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, h0, c0, w_ih, w_hh, bias, reverse = inputs
        ctx.reverse = reverse
        ctx.mark_non_differentiable(*output[3:])
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, bias, output[0], *output[3:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None,
                 d_cn: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        return _input_grads(ctx.saved_tensors, ctx.reverse, (d_out, d_hn, d_cn),
                            ctx.needs_input_grad[0])


class _LSTMLayer(torch.autograd.Function):
    """One member's layer (``x [L, N, F]``, states ``[N, H]``, weights ``[4H, F]``...);
    under ``vmap``, every member at once through :class:`_StackedLSTM`."""

    @staticmethod
    def forward(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                bias: Tensor | None, reverse: bool) -> tuple[Tensor, ...]:
        one = _forward(x.unsqueeze(0).contiguous(), h0.unsqueeze(0), c0.unsqueeze(0),
                       w_ih.unsqueeze(0), w_hh.unsqueeze(0), _lead(bias), reverse)
        return tuple(t.squeeze(0) for t in one)

    setup_context = _StackedLSTM.setup_context

    @staticmethod
    def backward(ctx: Any, d_out: Tensor | None, d_hn: Tensor | None,
                 d_cn: Tensor | None, *_: Any) -> tuple[Tensor | None, ...]:
        saved = tuple(_lead(t) for t in ctx.saved_tensors)
        grads = _input_grads(saved, ctx.reverse,  # type: ignore[arg-type]
                             (_lead(d_out), _lead(d_hn), _lead(d_cn)), ctx.needs_input_grad[0])
        return tuple(_unlead(g) for g in grads)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], x: Tensor, h0: Tensor, c0: Tensor,
             w_ih: Tensor, w_hh: Tensor, bias: Tensor | None, reverse: bool
             ) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        def lead(t: Tensor | None, dim: int | None) -> Tensor | None:
            if t is None:
                return None
            return t.movedim(dim, 0) if dim is not None else t.expand(info.batch_size, *t.shape)
        args = [lead(t, d) for t, d in zip((x, h0, c0, w_ih, w_hh, bias), in_dims[:6],
                                           strict=True)]
        outs = _StackedLSTM.apply(*args, reverse)
        return outs, (0,) * len(outs)


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor,
               weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
               reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction over ``x`` ``[L, N, F]`` (one member; batched by ``vmap``):
    outputs ``[L, N, H]``, ``h_n``, ``c_n``."""
    w_ih, w_hh, b_ih, b_hh = weights
    bias = b_ih + b_hh if b_ih is not None and b_hh is not None else None
    out, h, c, *_ = _LSTMLayer.apply(x, h0, c0, w_ih, w_hh, bias, reverse)
    return out, h, c
