"""Recurrent layers in the vectorized engine: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their
cells run stacked through a batchable recurrence, with the sequential engine's traces."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from stabcheck.engine import EngineSettings
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine, model_reason, rnn, select_engine
from stabcheck.plan import plan_probes
from tests.engine.test_vectorized import PROBE, _assert_same, _problem, _run

# A sequence classifier over any torch recurrent layer, as calibration/models.py's.
RECURRENT = """
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self, kind, layers, batch_first, bidirectional, dropout, state, bias):
            super().__init__()
            cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
            self.kind, self.batch_first, self.state = kind, batch_first, state
            self.rnn = cls(4, 12, num_layers=layers, batch_first=batch_first,
                           bidirectional=bidirectional, dropout=dropout, bias=bias)
            width = 12 * (2 if bidirectional else 1)
            if state:
                self.h0 = nn.Linear(4, 12 * layers * (2 if bidirectional else 1))
            self.head = nn.Linear(width, 3)

        def forward(self, x):  # x: [N, L, 4]
            seq = x if self.batch_first else x.transpose(0, 1)
            hx = None
            if self.state:  # an initial state computed from the input (it needs a gradient)
                h = torch.tanh(self.h0(x.mean(1))).view(x.shape[0], -1, 12).transpose(0, 1)
                hx = (h.contiguous(), torch.zeros_like(h)) if self.kind == "lstm" \\
                    else h.contiguous()
            out, _ = self.rnn(seq, hx)
            last = out[:, -1] if self.batch_first else out[-1]
            return self.head(last)

    class Cells(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.gru = nn.LSTMCell(4, 8), nn.GRUCell(8, 8)
            self.rnn = nn.RNNCell(8, 8, nonlinearity="relu")
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = c = torch.zeros(x.shape[0], 8)
            g = None
            for t in range(x.shape[1]):
                h, c = self.lstm(x[:, t], (h, c))
                g = self.gru(h, g)
            return self.head(self.rnn(g))

    def build(kind="lstm", layers=1, batch_first=True, bidirectional=False, dropout=0.0,
              state=False, bias=True):
        return Classifier(kind, layers, batch_first, bidirectional, dropout, state, bias)

    def cells():
        return Cells()

    def sequences(n=96, length=6):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (n,), generator=g)
        t = torch.arange(length, dtype=torch.float32)
        x = torch.sin((0.5 + y[:, None, None]) * t[None, :, None] + torch.arange(4.0))
        return x + 0.3 * torch.randn(n, length, 4, generator=g), y
"""
SGD = {"name": "sgd", "kwargs": {"momentum": 0.9}}
ADAM = {"name": "adam", "kwargs": {}}


def _recurrent(write_config, write_module, model: dict[str, Any], optimizer: dict[str, Any],
               lrs: list[float], steps: int = 30, factory: str = "build") -> tuple[Any, Any]:
    write_module("recurrent.py", RECURRENT)
    return _problem(write_config, {
        "model": {"builtin": None, "factory": f"./recurrent.py:{factory}", "kwargs": model},
        "data": {"builtin": None, "factory": "./recurrent.py:sequences", "kwargs": {}},
        "optimizer": optimizer, "probe": {**PROBE, "steps": steps, "flush_every": 10},
        "sweep": {"learning_rates": lrs, "seeds": [0, 1], "batch_sizes": [16]}})


def _vectorized_and_same(problem: Any, config: Any) -> None:
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, VectorizedEngine), note
    vec = _run(engine, problem, config)
    assert {r.engine for r in vec.values()} == {"vectorized"}
    assert not [note for r in vec.values() for note in r.notes]  # no member replayed
    _assert_same(_run(SequentialEngine(), problem, config), vec)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("shape", [
    {"layers": 1, "batch_first": True},
    {"layers": 2, "batch_first": False},
    {"layers": 2, "batch_first": True, "bidirectional": True},
], ids=["1-layer", "2-layer-seq-first", "2-layer-bidirectional"])
def test_recurrent_traces_match_sequential(write_config, write_module, kind: str,
                                           shape: dict[str, Any]) -> None:
    problem, config = _recurrent(write_config, write_module, {"kind": kind, **shape}, SGD,
                                 [0.01, 0.05])
    _vectorized_and_same(problem, config)


@pytest.mark.parametrize("model", [
    {"kind": "lstm", "state": True, "bidirectional": True},
    {"kind": "gru", "state": True, "bias": False, "batch_first": False},
    {"kind": "rnn", "layers": 2},
], ids=["lstm-initial-state", "gru-no-bias-initial-state", "rnn-tanh"])
def test_initial_states_no_bias_and_plain_rnn_match(write_config, write_module,
                                                    model: dict[str, Any]) -> None:
    problem, config = _recurrent(write_config, write_module, model, ADAM, [0.003, 0.01],
                                 steps=20)
    _vectorized_and_same(problem, config)


def test_cells_match_sequential(write_config, write_module) -> None:
    problem, config = _recurrent(write_config, write_module, {}, SGD, [0.01, 0.05],
                                 steps=20, factory="cells")
    _vectorized_and_same(problem, config)


def test_dropout_between_layers_runs_vectorized_with_masks_per_member(
        write_config, write_module) -> None:
    # Two probes of one seed at nearly one LR: only their dropout masks tell them apart.
    problem, config = _recurrent(write_config, write_module,
                                 {"kind": "lstm", "layers": 2, "dropout": 0.5}, SGD,
                                 [0.01, 0.0100001], steps=10)
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, VectorizedEngine), note
    vec = _run(engine, problem, config)
    by_seed: dict[int, list[float]] = {}
    for r in vec.values():
        assert r.outcome == "completed" and r.engine == "vectorized"
        by_seed.setdefault(r.seed, []).append(float(r.series("loss")[0]))
    assert all(len(v) == 2 and v[0] != v[1] for v in by_seed.values())


def test_projection_falls_back_with_its_reason() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    assert model_reason(model) is None
    reason = model_reason(nn.ModuleDict({"enc": nn.LSTM(4, 8, proj_size=4)}))
    assert reason is not None and "enc (LSTM) has proj_size=4" in reason

    class Mine(nn.GRU):
        def forward(self, x, hx=None):  # type: ignore[override]
            return super().forward(x, hx)
    reason = model_reason(Mine(4, 8))
    assert reason is not None and "overrides forward" in reason


@pytest.mark.parametrize("module", [
    nn.LSTM(3, 5, num_layers=2, bidirectional=True), nn.GRU(3, 5, batch_first=True),
    nn.RNN(3, 5, nonlinearity="relu"), nn.LSTMCell(3, 5), nn.GRUCell(3, 5), nn.RNNCell(3, 5),
], ids=["lstm", "gru", "rnn-relu", "lstm-cell", "gru-cell", "rnn-cell"])
def test_the_recurrence_equals_torch_outputs_and_gradients_under_vmap(module: nn.Module) -> None:
    torch.manual_seed(0)
    cell = isinstance(module, nn.RNNCellBase)
    ours = copy.deepcopy(module)
    assert rnn.substitute(ours) == 1
    inputs = [torch.randn(4, 3)] if cell else [torch.randn(6, 4, 3), torch.randn(6, 3)]
    params = {k: torch.stack([v.detach() * (1 + 0.1 * i) for i in range(3)])
              for k, v in module.named_parameters()}

    def flat(out: Any) -> torch.Tensor:
        parts = out if isinstance(out, tuple) else (out,)
        parts = [q for p in parts for q in (p if isinstance(p, tuple) else (p,))]
        return torch.cat([p.reshape(-1) for p in parts])

    for x in inputs:  # batched and unbatched; every output (states included)
        for_each = [flat(functional_call(module, {k: v[i] for k, v in params.items()}, (x,)))
                    for i in range(3)]
        stacked = vmap(lambda p, x=x: flat(functional_call(ours, p, (x,))))(params)
        torch.testing.assert_close(stacked, torch.stack(for_each), rtol=1e-5, atol=1e-6)
        grads = torch.func.grad(lambda p, x=x: flat(functional_call(ours, p, (x,))).square()
                                .sum())({k: v[1] for k, v in params.items()})
        ref = {k: v[1].clone().requires_grad_() for k, v in params.items()}
        flat(functional_call(module, ref, (x,))).square().sum().backward()
        for name, value in ref.items():
            assert value.grad is not None
            torch.testing.assert_close(grads[name], value.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind,length,vectorized", [
    ("lstm", 16, True), ("lstm", 17, False), ("gru", 40, True)])
def test_an_lstm_over_long_sequences_for_few_members_runs_sequentially(
        write_config, write_module, kind: str, length: int, vectorized: bool) -> None:
    # 4 members: torch's fused LSTM kernel wins past 4 time steps a member (measured rule);
    # torch's CPU GRU is not fused, the stacked one wins at every length.
    write_module("recurrent.py", RECURRENT)
    problem, config = _problem(write_config, {
        "model": {"builtin": None, "factory": "./recurrent.py:build", "kwargs": {"kind": kind}},
        "data": {"builtin": None, "factory": "./recurrent.py:sequences",
                 "kwargs": {"length": length}},
        "probe": {**PROBE, "steps": 4}})
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, VectorizedEngine) == vectorized, note
    if not vectorized:
        assert note is not None and "\n" not in note
        assert f"rnn (LSTM) runs {length} time steps for cohorts of 4 members" in note


@pytest.mark.parametrize("kwargs", [
    {"num_layers": 2, "bidirectional": True}, {"bias": False, "batch_first": True}],
    ids=["2-layer-bidirectional", "no-bias-batch-first"])
def test_the_fused_lstm_layer_equals_torch_in_float64_to_second_order(
        kwargs: dict[str, Any]) -> None:
    # The stacked LSTM's own forward and backpropagation through time (lstm.py), over three
    # members with given initial states, against torch's LSTM member by member in float64:
    # outputs, gradients of every weight and of the initial states, and a Hessian-vector
    # product (double backward recomputes through the step-by-step recurrence).
    torch.manual_seed(0)
    module = nn.LSTM(3, 5, **kwargs).double()
    ours = copy.deepcopy(module)
    rnn.substitute(ours)
    states = 2 * module.num_layers if module.bidirectional else module.num_layers
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    params = {k: torch.stack([v.detach() * (1 + 0.2 * i) for i in range(3)])
              for k, v in module.named_parameters()}
    batch = 4 if kwargs.get("batch_first") else 6
    params["h0"] = torch.randn(3, states, batch, 5, dtype=torch.float64)
    params["c0"] = torch.randn_like(params["h0"])
    weights = torch.randn(3, 4, dtype=torch.float64)

    def loss(net: nn.Module, p: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        weights_only = {k: v for k, v in p.items() if k not in ("h0", "c0")}
        out, (h, c) = functional_call(net, weights_only, (x, (p["h0"], p["c0"])))
        return (out.square().sum() * w[0] + h.sum() * w[1] + c.square().sum() * w[2]
                + (out * out.roll(1, -1)).sum() * w[3])

    stacked = vmap(lambda p, w: loss(ours, p, w))(params, weights)
    reference = torch.stack([loss(module, {k: v[i] for k, v in params.items()}, weights[i])
                             for i in range(3)])
    torch.testing.assert_close(stacked, reference, rtol=1e-10, atol=1e-12)
    grads = vmap(torch.func.grad(lambda p, w: loss(ours, p, w)))(params, weights)
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    for i in range(3):
        one = {k: v[i].clone().requires_grad_() for k, v in params.items()}
        expected = torch.autograd.grad(loss(module, one, weights[i]), list(one.values()),
                                       create_graph=True)
        for (name, _), value in zip(one.items(), expected, strict=True):
            torch.testing.assert_close(grads[name][i], value.detach(), rtol=1e-10, atol=1e-12)
        hvp = torch.autograd.grad(sum((g * tangent[k][i]).sum() for k, g in
                                      zip(one, expected, strict=True)), list(one.values()))
        ours_one = {k: v[i].clone().requires_grad_() for k, v in params.items()}
        first = torch.autograd.grad(loss(ours, ours_one, weights[i]), list(ours_one.values()),
                                    create_graph=True)
        ours_hvp = torch.autograd.grad(sum((g * tangent[k][i]).sum() for k, g in
                                           zip(ours_one, first, strict=True)),
                                       list(ours_one.values()))
        for mine, theirs in zip(ours_hvp, hvp, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-11)
