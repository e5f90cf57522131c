"""The spike detector and the other time-series primitives, against known answers."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stabcheck.diagnose.series import find_spikes, quarter_medians, turning_point_z
from stabcheck.thresholds import Thresholds

TH = Thresholds()


def spikes(x: np.ndarray) -> list[int]:
    return [s.step for s in find_spikes(x, TH.spike_sigma, TH.spike_window,
                                        TH.spike_min_history, TH.spike_min_range_fraction,
                                        TH.spike_recovery_steps)]


def smooth_loss(n: int, seed: int, noise: float, floor: float, tau: float) -> np.ndarray:
    """A decreasing, noisy training curve: ``floor + exp(-t/tau)`` plus relative noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    clean = floor + np.exp(-t / tau)
    return clean * (1 + noise * rng.standard_normal(n))


NOISE = st.floats(0.0, 0.02)
curves = st.builds(smooth_loss, n=st.integers(60, 400), seed=st.integers(0, 2**31 - 1),
                   noise=NOISE, floor=st.floats(0.0, 2.0), tau=st.floats(10.0, 400.0))


@settings(max_examples=150, deadline=None)
@given(curve=curves)
def test_no_false_alarm_on_smooth_decreasing_noisy_series(curve: np.ndarray) -> None:
    assert spikes(curve) == []


@settings(max_examples=150, deadline=None)
@given(n=st.integers(60, 400), seed=st.integers(0, 2**31 - 1), noise=NOISE,
       floor=st.floats(0.0, 2.0), tau=st.floats(10.0, 400.0), where=st.floats(0.0, 1.0),
       height=st.floats(0.3, 5.0))
def test_planted_spike_is_found_at_its_exact_step(n: int, seed: int, noise: float,
                                                  floor: float, tau: float, where: float,
                                                  height: float) -> None:
    # A clear spike: `height` times the curve's range plus 25x the per-step noise (a spike
    # the size of the noise is not one), at a step with enough history before it.
    curve = smooth_loss(n, seed, noise, floor, tau)
    first = TH.spike_min_history + 2
    step = first + int(where * (curve.size - 2 - first))
    spiked = curve.copy()
    spiked[step] += height * (curve.max() - curve.min()) + 25 * noise * curve[step]
    assert spikes(spiked) == [step]


@settings(max_examples=100, deadline=None)
@given(curve=curves, where=st.floats(0.0, 1.0), height=st.floats(0.0, 5.0),
       a=st.floats(1e-3, 1e3), b=st.floats(-1e3, 1e3))
def test_spikes_are_invariant_to_affine_rescaling(curve: np.ndarray, where: float,
                                                  height: float, a: float, b: float) -> None:
    step = 20 + int(where * (curve.size - 22))
    series = curve.copy()
    series[step] += height * (curve.max() - curve.min())
    assert spikes(a * series + b) == spikes(series)


def test_spike_recovered_vs_not() -> None:
    curve = smooth_loss(200, 0, 0.01, 0.5, 60.0)
    recovered = curve.copy()
    recovered[100] += 2.0
    [spike] = find_spikes(recovered, 6, 128, 16, 0.1, 20)
    assert (spike.step, spike.recovered_at) == (100, 101)
    runaway = curve.copy()
    runaway[100:] += 2.0 * np.arange(1, 101)  # jumps and keeps climbing
    [spike] = find_spikes(runaway, 6, 128, 16, 0.1, 20)
    assert spike.step == 100 and spike.recovered_at is None


def test_spike_needs_history() -> None:
    curve = smooth_loss(100, 1, 0.01, 0.5, 50.0)
    curve[5] += 10.0  # before spike_min_history steps: nothing to compare with
    assert spikes(curve) == []


def test_noise_free_series_still_finds_a_spike() -> None:
    line = np.linspace(10.0, 1.0, 100)  # constant step: MAD of the changes is 0
    line[60] += 3.0
    assert spikes(line) == [60]


def test_turning_points_oscillation_vs_noise() -> None:
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(200)
    z_noise, _, _ = turning_point_z(noise)
    assert abs(z_noise) < 3
    alternating = np.exp(-np.arange(200) / 100) + 0.05 * (-1.0) ** np.arange(200)
    z, turning, n = turning_point_z(alternating)
    assert turning == n - 2 and z > 10
    monotone_z, turning, _ = turning_point_z(np.linspace(1, 0, 200))
    assert turning == 0 and monotone_z < -10


def test_quarter_medians() -> None:
    x = np.concatenate([np.full(25, 1.0), np.full(50, 5.0), np.full(25, 30.0)])
    assert quarter_medians(x) == (1.0, 30.0)
    assert all(np.isnan(v) for v in quarter_medians(np.ones(4)))
