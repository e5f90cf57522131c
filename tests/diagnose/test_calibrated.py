"""The detectors the calibration corpus asked for, on synthetic series with known answers:
the loss at init, runaway from the best loss, transient blow-ups, failed probes, gradient
spikes that the loss does or does not respond to, and causes that are not the LR."""

from __future__ import annotations

import numpy as np

from stabcheck.findings import Severity
from tests.diagnose.helpers import codes, decreasing, record, run


def test_initial_loss_is_the_first_step_not_a_median_of_exploded_steps() -> None:
    loss = np.r_[2.0, 40.0, 60.0, np.full(57, 2.1)]  # blown up by step 1, stuck at chance
    d = run([record(loss)])
    assert d.probes[0].stats.initial_loss == 2.0
    assert d.probes[0].status == "diverged"
    [f] = [f for f in d.findings if f.code == "SC102"]
    assert "above its initial 2" in f.message


def test_end_far_above_the_best_is_a_runaway_but_noise_near_zero_is_not() -> None:
    back_up = np.r_[np.linspace(2.0, 0.2, 30), np.linspace(0.2, 1.5, 30)]
    [f] = [f for f in run([record(back_up)]).findings if f.code == "SC102"]
    assert f.value > 3 and "best it reached" in f.message
    near_zero = np.r_[np.geomspace(2.0, 1e-3, 40), np.full(20, 4e-3)]  # 4x a tiny best
    assert "SC102" not in codes(run([record(near_zero)]))


def test_transient_blowup_is_a_warning_even_when_it_recovers() -> None:
    loss = decreasing(100, start=2.0, floor=0.2)
    loss[5] = 5.0  # 2.5x the initial loss
    d = run([record(loss)])
    [f] = [f for f in d.findings if f.code == "SC205"]
    assert f.steps == [5] and f.severity == Severity.WARNING and d.probes[0].status == "unstable"
    loss[5] = 3.5  # 1.75x: below the threshold
    assert "SC205" not in codes(run([record(loss)]))


def test_no_progress_where_a_lower_lr_trained_is_a_failed_probe() -> None:
    trained = record(decreasing(100, start=2.0, floor=0.5), lr=0.01, index=0)
    collapsed = record(np.r_[2.0, 9.0, np.full(98, 1.95)], lr=0.1, index=1)
    d = run([trained, collapsed])
    assert d.probes[1].status == "diverged" and "SC103" in codes(d)
    assert d.summary.max_stable_lr == {"32": 0.01}
    assert d.summary.min_diverging_lr == {"32": 0.1}
    # Alone, with no lower LR that learned, the same curve is no failed probe.
    assert "SC103" not in codes(run([record(np.r_[2.0, 9.0, np.full(98, 1.95)], lr=0.1)]))


def _spiky(response: int | None) -> tuple[np.ndarray, np.ndarray]:
    loss = decreasing(100, noise=0.002)
    grad = 1.0 + 0.01 * np.random.default_rng(1).standard_normal(100)
    grad[50] = 30.0
    if response is not None:
        loss[50 + response] += 1.0
    return loss, grad


def test_gradient_spike_is_information_unless_the_loss_responds_after_it() -> None:
    for response, severity in ((None, Severity.INFO), (0, Severity.INFO),
                               (2, Severity.WARNING)):
        loss, grad = _spiky(response)
        d = run([record(loss, grad=grad)], spike_noise_steps=0)
        [f] = [f for f in d.findings if f.code == "SC302"]
        assert f.severity == severity, response  # same step = the same (hard) batch


def test_early_adam_spikes_are_expected() -> None:
    loss = decreasing(100, noise=0.002)
    loss[8] += 1.0  # the loss responds two steps after the gradient spike ...
    grad = 1.0 + 0.01 * np.random.default_rng(2).standard_normal(100)
    grad[6] = 30.0  # ... inside Adam's first 10 steps
    severities = {}
    for name in ("adam", "sgd"):
        d = run([record(loss, grad=grad)], config={"optimizer": {"name": name}},
                spike_noise_steps=0, spike_min_history=3)
        [f] = [f for f in d.findings if f.code == "SC302"]
        severities[name] = f.severity
    assert severities == {"adam": Severity.INFO, "sgd": Severity.WARNING}


def test_nan_at_step_zero_everywhere_is_not_an_lr_problem() -> None:
    nan = np.full(1, np.nan)
    records = [record(nan, lr=lr, index=i, outcome="nonfinite", first_nonfinite_step=0)
               for i, lr in enumerate((1e-4, 1e-3, 1e-2))]
    d = run(records)
    [f] = [f for f in d.findings if f.code == "SC104"]
    assert f.severity == Severity.ERROR
    for finding in d.findings:
        assert "lower the learning rate" not in finding.recommendation.lower() or \
            finding.code not in ("SC101", "SC504")
    [no_lr] = [f for f in d.findings if f.code == "SC504"]
    assert "SC104" in no_lr.message and "will not help" in no_lr.recommendation
    assert d.summary.recommendations == ()


def test_constant_zero_loss_is_the_loss_function() -> None:
    d = run([record(np.zeros(50), lr=lr, index=i) for i, lr in enumerate((0.01, 0.1))])
    [f] = [f for f in d.findings if f.code == "SC105"]
    assert f.severity == Severity.ERROR
    assert d.summary.recommendations == ()  # no "train at lr <= ..." for a broken loss
