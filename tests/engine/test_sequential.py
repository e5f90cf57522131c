"""The sequential reference engine: what it measures, and that it measures it right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stabcheck.config import load_config
from stabcheck.engine import EngineSettings
from stabcheck.engine.instruments import batch_order, warmup_factors
from stabcheck.engine.sequential import run_probe
from stabcheck.plan import ProbeSpec
from stabcheck.problem import build_problem

SCALAR_MODEL = """
import torch
from torch import nn

class Scalar(nn.Module):
    '''loss = mean((w * x - y)^2): gradient descent multiplies w by (1 - 2 lr) each step.'''
    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w0)))
    def forward(self, x, y):
        return ((self.w * x - y) ** 2).mean()

def build(w0=1.0):
    return Scalar(w0)

def data(n=8):
    return torch.ones(n), torch.zeros(n)
"""


@pytest.fixture
def scalar_config(write_config, write_module):
    write_module("scalar.py", SCALAR_MODEL)

    def make(lr: float, steps: int = 12, **probe: object) -> object:
        return load_config(write_config({
            "model": {"builtin": None, "factory": "./scalar.py:build", "kwargs": {}},
            "data": {"builtin": None, "factory": "./scalar.py:data", "kwargs": {}},
            "loss": "model", "optimizer": {"name": "sgd", "kwargs": {}},
            "sweep": {"learning_rates": [lr], "seeds": [0], "batch_sizes": [8]},
            "probe": {"steps": steps, "flush_every": 3, **probe}}))
    return make


def run(loaded, lr: float | None = None, seed: int = 0, bs: int | None = None):
    problem = build_problem(loaded)
    cfg = loaded.config
    spec = ProbeSpec(batch_size=bs or cfg.sweep.batch_sizes[0],
                     lr=lr if lr is not None else cfg.sweep.lr_values()[0], seed=seed)
    return run_probe(problem, spec, EngineSettings.from_config(cfg.probe), "key")


def test_same_seed_gives_identical_trace(write_config) -> None:
    loaded = load_config(write_config())
    a, b = run(loaded, seed=3), run(loaded, seed=3)
    assert a.trace == b.trace and a.layer_grad_norms == b.layer_grad_norms
    c = run(loaded, seed=4)
    assert c.trace["loss"] != a.trace["loss"]


def test_divergence_is_recorded_at_the_exact_step(scalar_config) -> None:
    lr = 5000.5  # w_{t+1} = (1 - 2 lr) w_t = -10000 w_t: the loss w^2 grows 1e8 per step
    record = run(scalar_config(lr))
    # Ground truth: the same recurrence in float32, computed independently of the engine.
    w, expected = np.float32(1.0), None
    with np.errstate(over="ignore"):
        for t in range(12):
            if not np.isfinite(w * w):
                expected = t
                break
            w = np.float32(w * np.float32(1 - 2 * lr))
    assert expected == 5
    assert record.outcome == "nonfinite"
    assert record.first_nonfinite_step == expected
    assert record.nonfinite_what == "loss" and record.nonfinite_kind == "Inf"
    assert record.steps_run == expected + 1
    assert all(v is not None for v in record.trace["loss"][:expected])
    assert record.trace["loss"][expected] is None


def test_stable_scalar_matches_closed_form(scalar_config) -> None:
    lr = 0.1  # w_t = 0.8^t, loss_t = 0.64^t, grad_t = 2 w_t, update ratio = 2 lr
    record = run(scalar_config(lr, steps=6))
    assert record.outcome == "completed" and record.steps_run == 6
    np.testing.assert_allclose(record.trace["loss"], [0.64**t for t in range(6)], rtol=1e-5)
    np.testing.assert_allclose(record.trace["grad_norm"], [2 * 0.8**t for t in range(6)],
                               rtol=1e-5)
    np.testing.assert_allclose(record.trace["update_ratio"], [0.2] * 6, rtol=1e-5)
    np.testing.assert_allclose(record.trace["param_norm"], [0.8 ** (t + 1) for t in range(6)],
                               rtol=1e-5)
    assert record.layer_names == ["w"]


def test_clipping_fires_exactly_when_the_norm_exceeds_the_threshold(scalar_config) -> None:
    # grad = 2 w_t; with clip 1.0 the step is lr * grad * min(1, 1 / (grad + 1e-6)), as in
    # torch.nn.utils.clip_grad_norm_. From w=1 at lr 0.1: w = 1, .9, .8, .7, .6 are clipped;
    # at w = .5 the grad is exactly 1.0, and the 1e-6 makes the coefficient just under 1, so
    # it counts as clipped too (as in PyTorch); from w ≈ .4 on, nothing is clipped.
    record = run(scalar_config(0.1, steps=8, grad_clip=1.0))
    w, clipped = 1.0, []
    for _ in range(8):
        g = 2 * w
        coef = min(1.0, 1.0 / (g + 1e-6))
        clipped.append(1.0 if coef < 1.0 else 0.0)
        w -= 0.1 * g * coef
    assert record.trace["clipped"] == clipped
    assert sum(clipped) == 6  # exact clip fraction 6/8
    np.testing.assert_allclose(record.trace["grad_norm"][:3], [2.0, 1.8, 1.6], rtol=1e-5)


def test_grad_norm_matches_torch_clip_grad_norm(write_config) -> None:
    loaded = load_config(write_config({"probe": {"steps": 1}}))
    record = run(loaded, lr=0.1)
    problem = build_problem(loaded)
    torch.manual_seed(0)
    model = problem.build_model()
    order = batch_order(0, problem.data.n, 16, 1)
    loss = problem.loss_fn(model, problem.data.batch(order[0]))
    loss.backward()
    expected = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert record.trace["loss"][0] == pytest.approx(loss.item(), rel=1e-6)
    assert record.trace["grad_norm"][0] == pytest.approx(expected.item(), rel=1e-5)
    per_layer = [torch.sqrt(model.layers[0].linear.weight.grad.square().sum()
                            + model.layers[0].linear.bias.grad.square().sum()).item()]
    assert record.layer_names == ["layers.0.linear", "head"]
    assert record.layer_grad_norms[0][0] == pytest.approx(per_layer[0], rel=1e-5)


def test_warmup_schedule_is_recorded(write_config) -> None:
    record = run(load_config(write_config({"probe": {"warmup_steps": 4, "steps": 6}})), lr=0.1)
    np.testing.assert_allclose(record.trace["lr"], [0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(warmup_factors(3, 0).numpy(), [1, 1, 1])


def test_batch_order_reshuffles_each_epoch_and_drops_the_ragged_batch() -> None:
    order = batch_order(seed=7, n_samples=10, batch_size=4, steps=6)
    assert order.shape == (6, 4)
    epoch1, epoch2 = order[:2].flatten(), order[2:4].flatten()
    assert len(set(epoch1.tolist())) == 8 and len(set(epoch2.tolist())) == 8
    assert not torch.equal(epoch1, epoch2)
    assert torch.equal(order, batch_order(seed=7, n_samples=10, batch_size=4, steps=6))


def test_user_exception_is_recorded_with_frame_and_audit_goes_on(write_config,
                                                                  write_module) -> None:
    write_module("flaky.py", """
        import torch
        from torch import nn

        class Flaky(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 3)
                self.calls = 0
            def forward(self, x):
                self.calls += 1
                if self.calls == 5:  # the trial forward is a separate model instance
                    raise ValueError("bad value at call 5")
                return self.lin(x)

        def build():
            return Flaky()
    """)
    loaded = load_config(write_config({"model": {"builtin": None,
                                                 "factory": "./flaky.py:build",
                                                 "kwargs": {}}}))
    record = run(loaded, lr=0.1)
    assert record.outcome == "error"
    assert record.error["type"] == "ValueError"
    assert record.error["message"] == "bad value at call 5"
    assert record.error["where"].endswith("flaky.py:13 in forward")
    assert record.steps_run == 4  # steps 0-3 finished and are kept; step 4 raised
    assert len(record.trace["loss"]) == 4 and None not in record.trace["loss"]

