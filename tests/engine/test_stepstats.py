"""The sequential engine's statistics, derived at flush from raw per-step norms, equal the
per-step float64 formulas they replaced: every column and every per-layer gradient norm, on
several models, optimizers, clipping and fp16 settings, and after a snapshot is restored.

The reference below is the engine's former step, kept here verbatim in spirit: one float64
``vector_norm`` per gradient, per-layer sums by ``index_add_``, a clone of every weight for
the update's norm, the update ratio against the previous step's weight norm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from stabcheck.config import load_config
from stabcheck.engine import EngineSettings
from stabcheck.engine.custom import CustomStepProbe
from stabcheck.engine.instruments import CLIP_EPS, STAT_COLUMNS, LayerMap
from stabcheck.engine.sequential import SequentialProbe
from stabcheck.engine.stepstats import NormBuffer, exact_in_float32, in_float32_range
from stabcheck.plan import ProbeSpec
from stabcheck.problem import build_problem
from tests.engine.test_custom_step import PLAIN_STEP

STEPS = 14


def _norm64(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.linalg.vector_norm(x, dtype=torch.float64)
                        for x in tensors]).square().sum().sqrt()


def reference_step(probe: SequentialProbe, t: int, state: dict[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Step ``t`` of ``probe`` with the former per-step formulas: its STAT_COLUMNS row and
    per-layer gradient norms."""
    for group in probe.optimizer.param_groups:
        group["lr"] = probe.lrs[t]
    loss = probe.forward_loss(t)
    probe.optimizer.zero_grad(set_to_none=True)
    probe.scaler.scale(loss).backward()
    probe.scaler.unscale_(probe.optimizer)
    clip = probe.settings.grad_clip
    with torch.no_grad():
        owners = [i for i, p in enumerate(probe.params) if p.grad is not None]
        grad_sq = torch.stack([torch.linalg.vector_norm(probe.params[i].grad, dtype=torch.float64)
                               for i in owners]).square()
        index = torch.tensor(probe.layers.param_layer, dtype=torch.long)[owners]
        layer_sq = torch.zeros(len(probe.layers.names), dtype=torch.float64)
        layer_sq.index_add_(0, index, grad_sq)
        grad_norm = grad_sq.sum().sqrt()
        clipped = 0.0
        if clip is not None:
            torch.nn.utils.clip_grads_with_norm_(probe.params, clip, grad_norm)
            clipped = float(clip / (grad_norm + CLIP_EPS) < 1.0)
        before = [p.detach().clone() for p in probe.params]
    probe.scaler.step(probe.optimizer)
    probe.scaler.update()
    skipped = float(not bool(torch.isfinite(grad_norm))) if probe.scaler.is_enabled() else 0.0
    with torch.no_grad():
        update_norm = _norm64([p - b for p, b in zip(probe.params, before, strict=True)])
        new_norm = _norm64(probe.params)
        ratio = update_norm / state["param_norm"].clamp(min=1e-30)
        state["param_norm"] = new_norm
    values = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "clipped": clipped,
              "update_ratio": float(ratio), "param_norm": float(new_norm),
              "lr": probe.lrs[t], "skipped": skipped}
    row = np.array([values[c] for c in STAT_COLUMNS], dtype=np.float32)
    return row, layer_sq.sqrt().float().numpy()


def reference_run(probe: SequentialProbe, steps: int) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        state = {"param_norm": _norm64(probe.params)}
    rows = [reference_step(probe, t, state) for t in range(steps)]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def assert_same(stats: np.ndarray, layers: np.ndarray, ref: tuple[np.ndarray, np.ndarray],
                layer_names: tuple[str, ...]) -> None:
    ref_stats, ref_layers = ref
    assert stats.shape == ref_stats.shape and layers.shape == ref_layers.shape
    for i, name in enumerate(STAT_COLUMNS):
        np.testing.assert_allclose(stats[:, i], ref_stats[:, i], rtol=2e-5, atol=0,
                                   err_msg=f"column {name!r}")
    for j, name in enumerate(layer_names):
        np.testing.assert_allclose(layers[:, j], ref_layers[:, j], rtol=2e-5, atol=0,
                                   err_msg=f"layer {name!r} gradient norm")


UNUSED = """
import torch
from torch import nn

class WithUnused(nn.Module):
    '''An MLP with a head it never calls: that layer has no gradient, its norm is 0.'''
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.unused = nn.Linear(3, 3)
    def forward(self, x):
        return self.body(x)

def build():
    return WithUnused()
"""

CASES: dict[str, dict[str, Any]] = {
    "mlp sgd momentum": {},
    "mlp adam clipped, warmup": {"optimizer": {"name": "adam", "kwargs": {}},
                                 "probe": {"grad_clip": 0.05, "warmup_steps": 5}},
    "cnn batchnorm adamw clipped": {
        "model": {"builtin": "cnn", "kwargs": {"in_channels": 1, "channels": [4, 8],
                                                "num_classes": 3, "norm": "batchnorm"}},
        "data": {"builtin": "images", "kwargs": {"n_samples": 64, "image_size": 8,
                                                 "channels": 1, "n_classes": 3}},
        "optimizer": {"name": "adamw", "kwargs": {"weight_decay": 0.1}},
        "probe": {"grad_clip": 0.5}},
    "transformer adamw": {
        "model": {"builtin": "transformer", "kwargs": {"seq_len": 8, "d_model": 16,
                                                        "n_layers": 1, "n_heads": 2}},
        "data": {"builtin": "text", "kwargs": {"seq_len": 8, "max_samples": 64}},
        "optimizer": {"name": "adamw", "kwargs": {}}},
    "mlp fp16 loss scaling": {"probe": {"dtype": "float16"}},
    "unused layer": {"model": {"builtin": None, "factory": "./unused.py:build", "kwargs": {}},
                     "probe": {"grad_clip": 0.1}},
}


def _probe(write_config, write_module, updates: dict[str, Any], lr: float = 0.05,
           cls: type = SequentialProbe) -> SequentialProbe:
    write_module("unused.py", UNUSED)
    loaded = load_config(write_config(updates))
    problem = build_problem(loaded)
    settings = EngineSettings.from_config(loaded.config.probe)
    settings = EngineSettings(**{**settings.__dict__, "steps": STEPS})
    spec = ProbeSpec(batch_size=16, lr=lr, seed=0)
    return cls(problem, spec, settings, problem.data.to(problem.device))


def _norms_on_device(probe: SequentialProbe) -> None:
    """The probe's buffer as a CUDA device's: float64 norms stacked on the device, no host
    reads (run here on the CPU)."""
    probe.buffer = NormBuffer(probe.params, probe.layers, STEPS, probe.device,
                              probe.settings.grad_clip, probe.scaler.is_enabled(), on_host=False)
    probe.buffer.fill("lr", torch.tensor(probe.lrs))


@pytest.mark.parametrize("on_host", [True, False], ids=["norms on the host", "on the device"])
@pytest.mark.parametrize("case", list(CASES))
def test_flushed_statistics_equal_the_per_step_formulas(case, on_host, write_config,
                                                        write_module) -> None:
    try:
        probe = _probe(write_config, write_module, CASES[case])
        reference = _probe(write_config, write_module, CASES[case])
    except Exception as exc:  # e.g. a builtin's keyword renamed
        raise AssertionError(f"{case}: could not build the probe: {exc}") from exc
    if not on_host:
        _norms_on_device(probe)
    for t in range(STEPS):
        probe.step(t)
        if t in (4, 9):  # flushes in chunks, as the schedule does
            probe.buffer.flush(t + 1)
    probe.buffer.flush(STEPS)
    stats, layers = probe.buffer.host_stats, probe.buffer.host_layers
    assert np.isfinite(stats).all()
    assert_same(stats, layers, reference_run(reference, STEPS), probe.layers.names)
    if "clipped" in case or "unused" in case:  # the cases were chosen so clipping fires
        assert stats[:, STAT_COLUMNS.index("clipped")].max() == 1.0
    if case == "unused layer":
        assert (layers[:, probe.layers.names.index("unused")] == 0).all()


def test_a_restored_snapshot_measures_the_next_update_against_its_own_weights(
        write_config, write_module) -> None:
    updates = CASES["mlp adam clipped, warmup"]
    probe = _probe(write_config, write_module, updates)
    reference = _probe(write_config, write_module, updates)
    for t in range(3):
        probe.step(t)
    snap = probe.snapshot(3)
    for t in range(3, 8):  # a detour, then back: as a NaN replay does
        probe.step(t)
    probe.restore(snap)
    for t in range(3, STEPS):
        probe.step(t)
    probe.buffer.flush(STEPS)
    assert_same(probe.buffer.host_stats, probe.buffer.host_layers,
                reference_run(reference, STEPS), probe.layers.names)


@pytest.mark.parametrize("on_host", [True, False], ids=["norms on the host", "on the device"])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_a_custom_step_measures_what_the_reference_step_does(clip, on_host, write_config,
                                                             write_module) -> None:
    write_module("step.py", PLAIN_STEP)
    updates = {"step": "./step.py:train_step", "probe": {"grad_clip": clip}}
    probe = _probe(write_config, write_module, updates, cls=CustomStepProbe)
    if not on_host:
        assert isinstance(probe, CustomStepProbe)
        _norms_on_device(probe)
        probe.buffer.clip_norms, probe.buffer.loss_scaling = probe.opt_norms, False
    reference = _probe(write_config, write_module, {"probe": {"grad_clip": clip}})
    for t in range(STEPS):
        probe.step(t)
    probe.buffer.flush(STEPS)
    ref = reference_run(reference, STEPS)
    assert_same(probe.buffer.host_stats, probe.buffer.host_layers, ref, probe.layers.names)
    np.testing.assert_allclose(probe.series(STEPS)["grad_norm/model"],
                               ref[0][:, STAT_COLUMNS.index("grad_norm")], rtol=2e-5)


CHANNELS_LAST = """
import torch
from torch import nn

def build():
    '''A CNN whose convolution weights are channels_last: not viewable flat.'''
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 2, 8, 8))
    return net.to(memory_format=torch.channels_last)
"""


def test_weights_that_are_not_flat_views_are_measured_as_the_reference_measures_them(
        write_config, write_module) -> None:
    # A channels_last convolution (not viewable flat), and a parameter whose storage a
    # training loop replaced (``p.data = ...``) half-way: both measured on their current values.
    write_module("channels_last.py", CHANNELS_LAST)
    updates = {"model": {"builtin": None, "factory": "./channels_last.py:build", "kwargs": {}},
               "data": {"builtin": "images", "kwargs": {"n_samples": 64, "image_size": 8,
                                                        "channels": 2, "n_classes": 3}}}
    probe = _probe(write_config, write_module, updates)
    reference = _probe(write_config, write_module, updates)
    assert not all(p.is_contiguous() for p in probe.params)
    ref = reference_run(reference, STEPS)
    for t in range(STEPS):
        if t == 6:
            with torch.no_grad():
                for p, q in zip(probe.params, reference.params, strict=True):
                    p.data = q.detach().clone()  # the reference's weights after its run…
            probe.buffer.weights_loaded()
            break
        probe.step(t)
    probe.buffer.flush(6)
    assert_same(probe.buffer.host_stats[:6], probe.buffer.host_layers[:6],
                (ref[0][:6], ref[1][:6]), probe.layers.names)
    # …so the next update is measured against new storage: its norm must be that of the
    # weights now in place, not of the replaced ones.
    probe.step(6)
    probe.buffer.flush(7)
    with torch.no_grad():
        new_norm = _norm64(probe.params)
    np.testing.assert_allclose(probe.buffer.host_stats[6, STAT_COLUMNS.index("param_norm")],
                               float(new_norm), rtol=2e-5)


SCALED = """
from torch import nn

SCALE = {scale!r}

class Scaled(nn.Module):
    '''An MLP whose logits are scaled: its gradients are SCALE times an MLP's.'''
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    def forward(self, x):
        return self.body(x) * SCALE

def build():
    return Scaled()
"""


@pytest.mark.parametrize(("scale", "lr"), [(1e22, 1e-40), (1e-24, 0.05)],
                         ids=["float32 sum of squares overflows", "squares are subnormal"])
def test_norms_past_float32s_sum_of_squares_equal_the_float64_ones(scale, lr, write_config,
                                                                   write_module) -> None:
    # Gradients of ~1e21 are finite, but their float32 sum of squares is not; those of
    # ~1e-25 square to 0 in float32. Either way a float32 norm would be wrong (inf, 0), and
    # the engine must take it again in float64.
    write_module("scaled.py", SCALED.format(scale=scale))
    updates = {"model": {"builtin": None, "factory": "./scaled.py:build", "kwargs": {}}}
    probe = _probe(write_config, write_module, updates, lr=lr)
    reference = _probe(write_config, write_module, updates, lr=lr)
    probe.step(0)
    grads = [p.grad for p in probe.params]
    plain = [float(torch.linalg.vector_norm(g)) for g in grads]
    exact = [float(torch.linalg.vector_norm(g, dtype=torch.float64)) for g in grads]
    assert any(a != pytest.approx(b, rel=1e-3, abs=0) for a, b in zip(plain, exact, strict=True))
    for t in range(1, STEPS):
        probe.step(t)
    probe.buffer.flush(STEPS)
    stats = probe.buffer.host_stats
    assert np.isfinite(stats).all() and (stats[:, STAT_COLUMNS.index("grad_norm")] > 0).all()
    assert_same(stats, probe.buffer.host_layers, reference_run(reference, STEPS),
                probe.layers.names)


def test_which_float32_norms_are_taken_again_in_float64() -> None:
    assert exact_in_float32(1.0, 10**4) and exact_in_float32(2.0 ** 50, 1)
    assert not exact_in_float32(float("inf"), 1)  # an overflow, or an infinite element
    assert not exact_in_float32(2.0 ** 51, 1)  # a sum of such squares could overflow
    assert not exact_in_float32(0.0, 4)  # all zero, or every square subnormal
    assert in_float32_range(1e-16, 100) and not in_float32_range(1e-16, 10**12)
    assert exact_in_float32(float("nan"), 4)  # NaN either way: some element is NaN
    assert not exact_in_float32(1.0, 10**6)  # a run that long adds up rounding errors


def test_long_weight_vectors_are_measured_to_float32_rounding() -> None:
    # float32 norms of 10^6 elements drift from the float64 ones (here by ~1e-5); the flat
    # weight buffers are reduced by rows and summed in float64 instead.
    weight = torch.nn.Parameter(torch.linspace(0.1, 1.0, 10**6))
    buffer = NormBuffer([weight], LayerMap.from_names(["w.weight"]), 2, torch.device("cpu"),
                        None, False)
    exact = float(torch.linalg.vector_norm(weight.detach(), dtype=torch.float64))
    assert abs(float(torch.linalg.vector_norm(weight.detach())) - exact) > 1e-6 * exact
    assert buffer.weight_norm == pytest.approx(exact, rel=1e-7)
