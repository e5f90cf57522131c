"""Recurrent layers the stacked forward can batch: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and
their cells, computed from matmuls and pointwise gates.

``vmap`` has no batching rule for torch's fused recurrent kernels (``aten::lstm``, ``gru``,
``rnn_tanh``, ``lstm_cell``: "Batching rule not implemented"; ``gru_cell`` and
``rnn_tanh_cell`` run through a slow per-member fallback). :func:`substitute` gives the
stacked engine's base module, and only it, a forward per recurrent module that runs the
equations of torch's documentation step by step (gate order i, f, g, o for the LSTM; r, z, n
for the GRU, the reset gate applied to ``W_hn h + b_hn``), reading the weights the parameter
swap put in the module's slots: the same function, which ``vmap`` batches over the members.
The sequential engine keeps torch's own modules: it is the reference the trial compares with.

Covered: ``num_layers``, ``batch_first``, ``bias``, ``bidirectional``, unbatched inputs,
given or zero initial states, dropout between layers in training mode (per member under
``vmap(randomness="different")``). Not covered (:func:`model_reason`, the audit runs
sequentially): an LSTM with ``proj_size > 0``, a subclass with its own ``forward``; a
``PackedSequence`` input fails the trial step, with that reason.

Speed: the LSTM, the costly one, runs each layer as one autograd Function over all members with
its backpropagation through time written out (:mod:`.lstm`); the GRU and RNN run the
step-by-step recurrence (:mod:`.recurrence`), a handful of ``vmap``-ed operations per time
step. Torch's own LSTM on CPU is one fused oneDNN kernel per layer (its GRU and RNN are not:
they run step by step too, and the stacked recurrence beat them at every size measured).
:func:`slower_reason` holds the measured break-even (``python -m
benchmarks.bench_corpus_engines --breakeven``, hidden 32, batch 16, one thread, 2-core CPU):
the stacked LSTM wins from about one member per four time steps (4 members at 16 steps, 6-8 at
32, 12-16 at 64), so a cohort with fewer runs sequentially.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from stabcheck.engine.vectorized import recurrence
from stabcheck.engine.vectorized.lstm import lstm_layer
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Problem, TensorData

Tensor = torch.Tensor
_SEQUENCE = (nn.LSTM, nn.GRU, nn.RNN)
_CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
# Below one member per this many time steps, torch's own fused LSTM is the faster engine.
STEPS_PER_MEMBER = 4


def _own_forward(module: nn.Module) -> bool:
    """Whether ``module``'s forward is the torch class's own (not a subclass's override)."""
    for cls in (*_SEQUENCE, *_CELLS):
        if isinstance(module, cls):
            return type(module).forward is cls.forward
    return False


def model_reason(model: nn.Module) -> str | None:
    """Why a recurrent module of ``model`` cannot run stacked, or ``None``."""
    for name, module in model.named_modules():
        if not isinstance(module, (*_SEQUENCE, *_CELLS)):
            continue
        label = f"{name or 'the model'} ({type(module).__name__})"
        if isinstance(module, nn.LSTM) and module.proj_size > 0:
            return (f"{label} has proj_size={module.proj_size}, which has no vectorized "
                    "implementation")
        if not _own_forward(module):
            return f"{label} overrides forward, which the vectorized recurrence cannot follow"
    return None


def _time_steps(module: nn.RNNBase, args: tuple[Any, ...]) -> int:
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):  # a PackedSequence: the trial refuses it anyway
        return 0
    return int(x.shape[1] if module.batch_first and x.dim() == 3 else x.shape[0])


def slower_reason(problem: Problem, model: nn.Module, data: TensorData,
                  probes: Sequence[ProbeSpec]) -> str | None:
    """Why the sequential engine is the faster one for this model's recurrent layers, or
    ``None``: a recurrent layer with a fused torch kernel (the LSTM on CPU; every one on
    other devices, unmeasured there) over more than :data:`STEPS_PER_MEMBER` time steps per
    member of the largest cohort. One forward of ``model`` (built for the problem, spent by
    this) on one batch measures the sequence lengths; a model without such a layer costs
    nothing."""
    cpu = problem.device.type == "cpu"
    fused = {name: m for name, m in model.named_modules()
             if isinstance(m, _SEQUENCE) and _own_forward(m) and (m.mode == "LSTM" or not cpu)}
    if not fused or not probes:
        return None
    steps: dict[str, int] = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, name=name: steps.__setitem__(
            name, max(steps.get(name, 0), _time_steps(mod, args))))
        for name, m in fused.items()]
    sizes = [p.batch_size for p in probes]
    members = max(sizes.count(b) for b in set(sizes))
    try:
        with torch.no_grad():
            problem.loss_fn(model, data.batch(torch.arange(min(min(sizes), data.n),
                                                           device=problem.device)))
    finally:
        for hook in hooks:
            hook.remove()
    for name, length in steps.items():
        if length > STEPS_PER_MEMBER * members:
            kind = type(fused[name]).__name__
            return (f"{name} ({kind}) runs {length} time steps for cohorts of {members} "
                    f"members: torch's fused {kind} is faster than the vectorized recurrence "
                    f"below one member per {STEPS_PER_MEMBER} time steps")
    return None


def substitute(model: nn.Module) -> int:
    """Give every recurrent module of ``model`` the batchable forward; how many there were."""
    count = 0
    for module in model.modules():
        if isinstance(module, _SEQUENCE) and _own_forward(module):
            module.forward = functools.partial(_sequence_forward, module)  # type: ignore[method-assign,assignment]
        elif isinstance(module, _CELLS) and _own_forward(module):
            module.forward = functools.partial(_cell_forward, module)  # type: ignore[method-assign]
        else:
            continue
        count += 1
    return count


# ---- whole sequences ------------------------------------------------------------------

def _weights(module: nn.Module, suffix: str) -> tuple[Tensor, Tensor, Tensor | None,
                                                       Tensor | None]:
    """``W_ih, W_hh, b_ih, b_hh`` as the parameter swap put them in the module's slots."""
    w_ih, w_hh = getattr(module, f"weight_ih{suffix}"), getattr(module, f"weight_hh{suffix}")
    if not module.bias:
        return w_ih, w_hh, None, None
    return w_ih, w_hh, getattr(module, f"bias_ih{suffix}"), getattr(module, f"bias_hh{suffix}")


def _fused_lstm(x: Tensor, weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None]
                ) -> bool:
    """Whether :mod:`.lstm`'s layer computes this LSTM layer: not under autocast (whose
    casts the matmuls of the step-by-step recurrence follow), one floating dtype."""
    return not torch.is_autocast_enabled(x.device.type) and all(
        w is None or w.dtype == x.dtype for w in weights)


def direction(mode: str, x: Tensor, h: Tensor, c: Tensor | None,
              weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
              reverse: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer, one direction over ``x`` ``[L, N, H_in]``: outputs ``[L, N, H]``, ``h_n``,
    ``c_n``. An LSTM goes through :func:`.lstm.lstm_layer` where it can, the rest through
    :func:`.recurrence.sequence`."""
    if mode == "LSTM" and c is not None and _fused_lstm(x, weights):
        return lstm_layer(x, h, c, weights, reverse)
    return recurrence.sequence(mode, x, h, c, weights, reverse)


def _sequence_forward(module: nn.RNNBase, input: Any, hx: Any = None) -> tuple[Tensor, Any]:
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``'s forward (``proj_size == 0``)."""
    if isinstance(input, PackedSequence):
        raise NotImplementedError("a PackedSequence input to a recurrent layer has no "
                                  "vectorized implementation")
    lstm = module.mode == "LSTM"
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(1)
    if batched and module.batch_first:
        x = x.transpose(0, 1)
    dirs = 2 if module.bidirectional else 1
    shape = (module.num_layers * dirs, x.shape[1], module.hidden_size)
    if hx is None:
        h0 = x.new_zeros(shape)
        c0 = x.new_zeros(shape) if lstm else None
    else:
        h0, c0 = hx if lstm else (hx, None)
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
    h0 = h0.to(x.dtype)  # as torch's own forward: states follow the input's dtype
    c0 = c0.to(x.dtype) if c0 is not None else None
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    layer_in = x
    for layer in range(module.num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            weights = _weights(module, f"_l{layer}{'_reverse' if d else ''}")
            out, h, c = direction(module.mode, layer_in, h0[k],
                                  c0[k] if c0 is not None else None, weights, reverse=d == 1)
            outs.append(out)
            h_n.append(h)
            if c is not None:
                c_n.append(c)
        layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
        if module.dropout and module.training and layer < module.num_layers - 1:
            layer_in = F.dropout(layer_in, module.dropout, training=True)
    output, h_out = layer_in, torch.stack(h_n)
    c_out = torch.stack(c_n) if lstm else None
    if batched and module.batch_first:
        output = output.transpose(0, 1)
    if not batched:
        output, h_out = output.squeeze(1), h_out.squeeze(1)
        c_out = c_out.squeeze(1) if c_out is not None else None
    return output, ((h_out, c_out) if lstm else h_out)


def _cell_forward(module: nn.RNNCellBase, input: Tensor, hx: Any = None) -> Any:
    """``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``'s forward."""
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    lstm = isinstance(module, nn.LSTMCell)
    if hx is None:
        zeros = x.new_zeros(x.shape[0], module.hidden_size)
        h, c = (zeros, zeros) if lstm else (zeros, None)
    else:
        h, c = hx if lstm else (hx, None)
        if not batched:
            h = h.unsqueeze(0)
            c = c.unsqueeze(0) if c is not None else None
    w_ih, w_hh, b_ih, b_hh = _weights(module, "")
    gi = F.linear(x, w_ih, b_ih)
    if lstm:
        assert c is not None
        h, c = recurrence.lstm_step(gi, h, c, w_hh, b_hh)
    elif isinstance(module, nn.GRUCell):
        h = recurrence.gru_step(gi, h, w_hh, b_hh)
    else:
        h = recurrence.rnn_step(gi, h, w_hh, b_hh, relu=module.nonlinearity == "relu")
    if not batched:
        h = h.squeeze(0)
        c = c.squeeze(0) if c is not None else None
    return (h, c) if lstm else h
