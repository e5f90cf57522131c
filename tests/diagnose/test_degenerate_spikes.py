"""Spikes off a flat stretch: the evidence is the jump, never a z-score over a ~0 spread.

A loss stuck at a constant, or trained to exactly 0 (the starter config at lr=1 does this),
has a robust spread of ~0; dividing a jump by it printed "12978462 sigma". The spread is
floored (stabcheck.diagnose.series.SPREAD_FLOOR_FRACTION, RELATIVE_SPREAD_FLOOR) and such a
spike reports "jump from A to B (+x%) off a flat stretch".
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from stabcheck.findings import Finding
from tests.diagnose.helpers import decreasing, record, run


def sigmas(findings: list[Finding]) -> list[float]:
    return [float(x) for f in findings for x in re.findall(r"(\d+) sigma", f.message)]


def only(findings: list[Finding], code: str) -> Finding:
    [f] = [f for f in findings if f.code == code]
    return f


def test_near_flat_loss_with_a_jump_reports_the_jump() -> None:
    rng = np.random.default_rng(0)
    loss = 2.302585 + 1e-9 * rng.standard_normal(80)  # stuck at ln(10), float-level noise
    loss[40] = 2.9
    d = run([record(loss)])
    f = only(d.findings, "SC201")
    assert f.steps == [40]
    assert "jump from 2.303 to 2.9 (+26%) off a flat stretch" in f.message
    assert sigmas(d.findings) == []
    # The value is the relative jump; a z-score there is no measurement, so no threshold.
    assert f.value == pytest.approx(0.597415 / 2.302585, rel=1e-4)
    assert f.threshold is None and f.evidence is None


def test_loss_trained_to_exactly_zero_then_jumping_is_not_millions_of_sigma() -> None:
    # The starter config's lr=1 probes: 1.34 down to exactly 0, then single-batch jumps.
    loss = np.r_[1.336, 1.15, 0.27, 0.031, 5e-4, np.zeros(75)]
    loss[[22, 40, 61]] = [0.3176, 17.34, 5.68]
    d = run([record(loss, grad=np.ones(80))])
    f = only(d.findings, "SC201")
    assert f.steps == [22, 40, 61]
    assert "worst jump from 0 to 17.34 off a flat stretch" in f.message
    assert sigmas(d.findings) == [] and f.value is None


def test_a_jump_from_a_denormal_gradient_norm_has_no_relative_size() -> None:
    # The same probes' gradient norms sit at 1e-38 and jump to 250: not "+2e40%".
    grad = np.r_[1.7, 2.6, 0.84, 0.47, 0.01, np.full(75, 8e-39)]
    grad[50] = 253.1
    d = run([record(decreasing(80), grad=grad)])
    f = only(d.findings, "SC302")
    assert "worst jump from 8e-39 to 253.1 off a flat stretch" in f.message
    assert "%)" not in f.message.split("flat stretch")[0]
    assert f.value is None and f.threshold is None


def test_near_flat_gradient_norm_spike_reports_the_jump() -> None:
    grad = 1.0 + 1e-10 * np.random.default_rng(1).standard_normal(80)
    grad[50] = 5.0
    d = run([record(decreasing(80), grad=grad)])
    f = only(d.findings, "SC302")
    assert f.steps == [50]
    assert "worst jump from 1 to 5 (+400%) off a flat stretch" in f.message
    assert sigmas(d.findings) == [] and f.value == pytest.approx(4.0, rel=1e-6)


def test_a_spike_on_a_noisy_curve_keeps_its_z_score() -> None:
    loss = decreasing(120, noise=0.02)
    loss[60] += 1.0
    d = run([record(loss)])
    f = only(d.findings, "SC201")
    assert f.steps == [60] and "flat stretch" not in f.message
    [z] = sigmas([f])
    assert f.threshold == 6.0 and f.value == pytest.approx(z, abs=0.5)
    assert 6 < z < 1000
