"""The recurrent layers' equations, step by step: one time step of an LSTM, GRU or RNN (torch's
documented equations: gate order i, f, g, o for the LSTM; r, z, n for the GRU, the reset gate
applied to ``W_hn h + b_hn``) and a whole sequence as a Python loop over time steps.

:mod:`.rnn` runs the GRU, the RNN and the cells through these under ``vmap``; :mod:`.lstm`'s
fused layer recomputes through them for its exact double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def lstm_step(gi: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None
              ) -> tuple[Tensor, Tensor]:
    """``gi`` is ``W_ii x + b_ii`` (all four gates); returns ``h', c'``."""
    i, f, g, o = (gi + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """``r, z, n`` with ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, relu: bool) -> Tensor:
    pre = gi + F.linear(h, w_hh, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


def sequence(mode: str, x: Tensor, h: Tensor, c: Tensor | None,
             weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
             reverse: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer, one direction over ``x`` ``[L, N, H_in]``, step by step: outputs
    ``[L, N, H]``, ``h_n``, ``c_n`` (``mode``: ``LSTM``, ``GRU``, ``RNN_TANH``, ``RNN_RELU``)."""
    w_ih, w_hh, b_ih, b_hh = weights
    # The input projections of every time step at once, then unbound: indexing each step
    # (``gi[t]``) would cost a zero-filled gradient of the whole tensor per step in backward.
    gis = F.linear(x, w_ih, b_ih).unbind(0)
    outs: list[Tensor] = [h] * x.shape[0]
    for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
        if mode == "LSTM":
            assert c is not None
            h, c = lstm_step(gis[t], h, c, w_hh, b_hh)
        elif mode == "GRU":
            h = gru_step(gis[t], h, w_hh, b_hh)
        else:
            h = rnn_step(gis[t], h, w_hh, b_hh, relu=mode == "RNN_RELU")
        outs[t] = h
    return torch.stack(outs), h, c
