"""Time-series primitives the detectors share: trailing z-scores, spikes, turning points.

Everything here takes plain numpy arrays (NaN for missing or non-finite steps) and is
invariant to an affine change of units ``x -> a*x + b`` with ``a > 0``, so a detector gives
the same answer whether the loss is in nats or bits, offset or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TREND_STEPS = 8


def trailing_noise(x: np.ndarray, window: int, min_history: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Local trend per step and the spread of one step's change, from trailing differences.

    Entry ``t`` looks at the differences ``d[k] = x[k] - x[k-1]`` before step ``t``. The trend
    is the median of the last :data:`TREND_STEPS` of them (recent, so a decelerating decrease
    is followed); the spread is ``1.4826 * MAD`` of the last ``window`` of them, a robust
    standard deviation of one step's change that neither a steady trend nor an earlier spike
    inflates. NaN where fewer than ``min_history`` differences are finite.
    """
    d = np.diff(x.astype(np.float64), prepend=np.nan)
    padded = np.concatenate([np.full(window, np.nan), d])
    # Row t of the view is padded[t : t + window] = d[t - window : t]: the trailing window.
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)[: x.size]
    count = np.isfinite(windows).sum(axis=1)
    enough = count >= min_history
    trend = np.full(x.size, np.nan)
    noise = np.full(x.size, np.nan)
    if enough.any():
        w = windows[enough]
        centre = np.nanmedian(w, axis=1)
        noise[enough] = 1.4826 * np.nanmedian(np.abs(w - centre[:, None]), axis=1)
        trend[enough] = np.nanmedian(w[:, -TREND_STEPS:], axis=1)
    return trend, noise


@dataclass(frozen=True)
class Spike:
    """One spike event: the step it starts at, its z-score and the pre-spike mean."""

    step: int
    zscore: float
    baseline: float
    recovered_at: int | None


def find_spikes(x: np.ndarray, sigma: float, window: int, min_history: int,
                min_range_fraction: float, recovery_steps: int) -> list[Spike]:
    """Steps where ``x`` jumps above its local trend by more than ``sigma`` noise units.

    The rolling z-score of step ``t`` is ``(x[t] - (x[t-1] + trend)) / spread`` with the trend
    and spread of :func:`trailing_noise` over the previous ``window`` steps — OLMo-core's
    "6 sigma over the previous 128 steps", with sigma measured from step-to-step changes so
    that the steep, steady decrease of a short probe neither hides a spike nor fakes one. A
    spike must also rise by at least ``min_range_fraction`` of the range ``x`` has covered
    so far, so noise on a converged, near-zero loss does not count. Consecutive spike steps
    form one event, reported at its first step; an event is *recovered* when ``x`` falls back
    to within a quarter of the jump above the pre-spike value within ``recovery_steps``.
    """
    trend, noise = trailing_noise(x, window, min_history)
    finite = np.isfinite(x)
    running_max = np.maximum.accumulate(np.where(finite, x, -np.inf))
    running_min = np.minimum.accumulate(np.where(finite, x, np.inf))
    spikes: list[Spike] = []
    previous = -2
    for t in range(1, x.size):
        span = running_max[t - 1] - running_min[t - 1]
        # A noise-free stretch (MAD 0) still has a scale: a millionth of the range so far.
        spread = max(noise[t], 1e-6 * span) if np.isfinite(noise[t]) else 0.0
        if not (finite[t] and finite[t - 1] and spread > 0):
            continue
        expected = x[t - 1] + trend[t]
        rise = x[t] - expected
        if rise > sigma * spread and rise >= min_range_fraction * span:
            if t != previous + 1:
                later = x[t + 1: t + 1 + recovery_steps]
                back = np.nonzero(np.isfinite(later) & (later <= x[t - 1] + 0.25 * rise))[0]
                spikes.append(Spike(t, float(rise / spread), float(x[t - 1]),
                                    int(t + 1 + back[0]) if back.size else None))
            previous = t
    return spikes


def turning_point_z(x: np.ndarray) -> tuple[float, int, int]:
    """The turning-point test for alternation: z-score, turning points found, points used.

    For ``n`` i.i.d. values the number of turning points (local maxima or minima) has mean
    ``2(n-2)/3`` and variance ``(16n-29)/90`` (Kendall & Stuart). A trend gives fewer, noise
    about as many, and a period-2 oscillation — the loss jumping up and down every step, as
    gradient descent does near ``2/lambda_max`` — gives nearly ``n-2``.
    """
    values = x[np.isfinite(x)]
    n = values.size
    if n < 8:
        return float("nan"), 0, n
    d = np.diff(values)
    turning = int(np.sum(d[:-1] * d[1:] < 0))
    mean = 2.0 * (n - 2) / 3.0
    var = (16.0 * n - 29.0) / 90.0
    return (turning - mean) / math.sqrt(var), turning, n


def quarter_medians(x: np.ndarray) -> tuple[float, float]:
    """Median of the first and of the last quarter of the finite values."""
    values = x[np.isfinite(x)]
    if values.size < 8:
        return float("nan"), float("nan")
    q = values.size // 4
    return float(np.median(values[:q])), float(np.median(values[-q:]))
