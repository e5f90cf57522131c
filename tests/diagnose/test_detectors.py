"""Per-probe detectors on synthetic traces whose right answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stabcheck.diagnose.clipping import recommended_clip
from stabcheck.findings import Severity
from stabcheck.records import significant
from tests.diagnose.helpers import codes, decreasing, record, run


def test_healthy_curve_has_no_findings() -> None:
    d = run([record(decreasing())])
    assert codes(d) == []
    assert d.probes[0].status == "healthy"


def test_nonfinite_names_step_and_module() -> None:
    r = record(np.r_[decreasing(57), [np.nan]], outcome="nonfinite", first_nonfinite_step=57,
               lr=1.0, seed=1)
    r.nonfinite_what, r.nonfinite_kind, r.nonfinite_module = "loss", "NaN", "blocks.2.attn"
    d = run([r])
    [f] = [f for f in d.findings if f.code == "SC101"]
    assert f.message == "NaN first appears in blocks.2.attn at step 57 (lr=1 seed=1 bs=32)"
    assert f.steps == [57] and d.probes[0].status == "diverged"


def test_finite_divergence() -> None:
    loss = np.linspace(1.0, 10.0, 100)
    d = run([record(loss)])
    [f] = [f for f in d.findings if f.code == "SC102"]
    assert f.value == pytest.approx(np.median(loss[-5:]) / loss[0])  # the loss at init
    assert d.probes[0].status == "diverged"


def test_one_batch_spike_is_noise_a_slow_recovery_a_warning() -> None:
    loss = decreasing(200)
    loss[120] += 1.5  # one hard batch: back at the next step
    d = run([record(loss)])
    [f] = [f for f in d.findings if f.code.startswith("SC2")]
    assert (f.code, f.steps, f.severity) == ("SC201", [120], Severity.INFO)
    assert "0.5% of steps" in f.message and "mini-batch noise" in f.message
    assert d.probes[0].status == "healthy"
    slow = decreasing(200)
    slow[120:132] += 1.5 * 0.8 ** np.arange(12)  # an overshoot that takes ~10 steps to undo
    d = run([record(slow)])
    [f] = [f for f in d.findings if f.code.startswith("SC2")]
    assert (f.code, f.steps, f.severity) == ("SC201", [120], Severity.WARNING)
    assert d.probes[0].status == "unstable"


def test_spike_that_leads_to_divergence_is_an_error() -> None:
    loss = decreasing(100)
    loss[80:] = 5.0 * 3.0 ** np.arange(20)  # jumps at step 80 and keeps growing
    loss[99] = np.nan
    d = run([record(loss, outcome="nonfinite", first_nonfinite_step=99)])
    assert {"SC101", "SC202"} <= set(codes(d))
    [f] = [f for f in d.findings if f.code == "SC202"]
    assert f.steps == [80] and f.severity == Severity.ERROR


def test_stagnation_is_a_warning_unless_a_larger_lr_trains() -> None:
    flat = 1.0 + 0.001 * np.random.default_rng(0).standard_normal(100)
    alone = run([record(flat, lr=0.001)])
    assert [f.severity for f in alone.findings if f.code == "SC203"] == [Severity.WARNING]
    with_larger = run([record(flat, lr=0.001, index=0), record(decreasing(100), lr=0.1,
                                                                index=1)])
    [f] = [f for f in with_larger.findings if f.code == "SC203"]
    assert f.severity == Severity.INFO and with_larger.probes[0].status == "healthy"


def test_oscillation_at_the_stability_limit() -> None:
    t = np.arange(200)
    loss = 1.0 + np.exp(-t / 50) + 0.05 * (-1.0) ** t  # GD flipping sides every step
    d = run([record(loss)])
    assert "SC204" in codes(d)
    assert "SC204" not in codes(run([record(decreasing(200, noise=0.05))]))


def test_sustained_gradient_growth() -> None:
    grad = np.geomspace(0.1, 5.0, 200)  # 50x over the probe, smoothly
    d = run([record(decreasing(200), grad=grad)])
    [f] = [f for f in d.findings if f.code == "SC301"]
    first, last = np.median(grad[:50]), np.median(grad[-50:])
    assert f.value == pytest.approx(last / first)
    assert "SC301" not in codes(run([record(decreasing(200), grad=np.geomspace(1, 5, 200))]))


def test_gradient_norm_spike_measured_before_clipping() -> None:
    grad = decreasing(200, seed=3, start=3.0, floor=1.0)
    grad[150] = 40.0
    d = run([record(decreasing(200), grad=grad)])
    [f] = [f for f in d.findings if f.code == "SC302"]
    assert f.steps == [150] and "peak 40" in f.message


def test_clip_fraction_exact_and_warning_above_half() -> None:
    clipped = np.zeros(100)
    clipped[:60] = 1.0
    config = {"probe": {"grad_clip": 1.0, "steps": 100}}
    d = run([record(decreasing(100), clipped=clipped)], config=config)
    [f] = [f for f in d.findings if f.code == "SC401"]
    assert f.value == 0.6 and f.threshold == 0.5
    assert d.probes[0].stats.clip_fraction == 0.6
    clipped[50:] = 0.0
    assert "SC401" not in codes(run([record(decreasing(100), clipped=clipped)], config=config))


def test_clip_that_never_fires_while_norms_spike() -> None:
    grad = decreasing(200, seed=1, start=3.0, floor=1.0)
    grad[100] = 50.0
    config = {"probe": {"grad_clip": 100.0, "steps": 200}}
    d = run([record(decreasing(200), grad=grad)], config=config)
    [f] = [f for f in d.findings if f.code == "SC402"]
    assert f.threshold == 100.0 and f.value == 50.0


def test_recommended_clip_is_the_90th_percentile_of_healthy_norms() -> None:
    healthy = record(decreasing(100), grad=np.arange(1.0, 101.0), index=0)
    broken = record(np.linspace(1, 50, 100), grad=np.full(100, 1e6), index=1)
    d = run([healthy, broken])
    overall, per_bs = recommended_clip(d.probes, 90.0)
    assert overall == pytest.approx(np.percentile(np.arange(1.0, 101.0), 90), rel=1e-3)
    assert per_bs == {"32": overall}
    # The summary holds it as the reports' one rounding rule keeps it.
    assert d.summary.clipping is not None
    assert d.summary.clipping.recommended_clip == significant(overall)


def _layer_init(sizes: list[int], grads: list[float]) -> dict[int, dict]:
    layers = [{"name": f"l{i}", "kind": "Linear", "size": s, "grad_norm": g,
               "weight_kurtosis": 0.0, "output_rms": 1.0}
              for i, (s, g) in enumerate(zip(sizes, grads, strict=True))]
    return {0: {"initial_loss": 1.1, "num_classes": 3, "loss": "cross_entropy",
                "layers": layers, "activations": []}}


def test_vanishing_gradients_at_init_and_in_training_name_the_layers() -> None:
    sizes = [400, 400, 400, 100]
    rms = [1e-9, 1e-6, 1e-2, 1.0]  # first/last = 1e-9
    init = _layer_init(sizes, [r * math.sqrt(s) for r, s in zip(rms, sizes, strict=True)])
    layers = {f"l{i}": np.full(100, r * math.sqrt(s))
              for i, (r, s) in enumerate(zip(rms, sizes, strict=True))}
    d = run([record(decreasing(100), layers=layers)], init=init)
    found = [f for f in d.findings if f.code == "SC303"]
    assert len(found) == 2  # once at init, once during training
    for f in found:
        assert f.value == pytest.approx(1e-9)
        assert "l0, l1" in f.message and "l2" not in f.message.split("near zero:")[1]


def test_healthy_gradient_flow_is_not_vanishing() -> None:
    sizes = [400, 400, 400, 100]
    init = _layer_init(sizes, [0.5 * math.sqrt(s) for s in sizes])
    d = run([record(decreasing(100))], init=init)
    assert "SC303" not in codes(d)
    assert d.summary.gradient_flow_at_init == {"0": 1.0}


def test_layer_with_exactly_zero_gradient() -> None:
    layers = {"used": np.ones(50), "unused": np.zeros(50)}
    [f] = [f for f in run([record(decreasing(50), layers=layers)]).findings
           if f.code.startswith("SC3")]
    assert f.code == "SC304" and "unused" in f.message and "used," not in f.message


def test_init_checks() -> None:
    report = {"initial_loss": 9.0, "num_classes": 4, "loss": "cross_entropy",
              "layers": [
                  {"name": "a", "kind": "Linear", "size": 100, "grad_norm": 1.0,
                   "weight_kurtosis": 0.1, "output_rms": 1.0},
                  {"name": "b", "kind": "Linear", "size": 100, "grad_norm": 1.0,
                   "weight_kurtosis": 6.0, "output_rms": 500.0},
                  {"name": "head", "kind": "Linear", "size": 10, "grad_norm": 1.0,
                   "weight_kurtosis": 0.0, "output_rms": 3.0}],
              "activations": [{"name": "a_act", "kind": "ReLU", "dead_fraction": 0.8},
                              {"name": "b_act", "kind": "Tanh", "saturated_fraction": 0.7}]}
    d = run([record(decreasing(50))], init={0: report, 1: report})
    assert codes(d) == ["SC601", "SC602", "SC603", "SC604", "SC605"]
    by = {f.code: f for f in d.findings}
    assert by["SC601"].value == 9.0
    assert by["SC601"].threshold == pytest.approx(1.5 * math.log(4))
    assert by["SC602"].value == 500.0 and "seeds 0, 1" in by["SC602"].message
    assert by["SC603"].value == 0.8 and "a_act" in by["SC603"].message
    assert by["SC604"].value == 0.7 and by["SC605"].value == 6.0
    report["initial_loss"] = math.log(4) + 0.1
    assert "SC601" not in codes(run([record(decreasing(50))], init={0: report}))
