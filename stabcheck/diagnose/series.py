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
# The spread a spike's z-score is measured against never falls below this fraction of the range
# the series has covered so far; a spread under it or under RELATIVE_SPREAD_FLOOR of the
# previous value is a flat stretch, whose spikes report their jump, never a z-score. On a
# flat stretch (a loss trained to exactly 0, stuck at a constant, flat after a blow-up) the
# robust spread is ~0 and ``rise / spread`` measures the flatness, not the jump ("12978462
# sigma"). Source, stabcheck's calibration corpus (calibration/README.md): on its real probes
# the spread of one step's change is a median 7.6% (loss) and 14% (gradient norm) of the
# range so far and 23% / 49% of the value; the 5% of steps under 1% of the range are flat
# stretches after a drop or a blow-up, and only 0.03% / 0.01% of steps are under 1e-4 of the
# value. The relative floor only names a stretch flat (it would make detection depend on an
# offset of the series); with the default thresholds the range floor decides no spike either:
# 6 floors are 6% of the range, under the 10% (spike_min_range_fraction) every spike must
# rise anyway.
SPREAD_FLOOR_FRACTION = 0.01
RELATIVE_SPREAD_FLOOR = 1e-4
# A jump to more than 100x its pre-spike value is a jump from (nearly) zero: reported by its
# values, with no relative size.
MAX_RELATIVE_JUMP = 100.0


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
    """One spike event: the step it starts at, its z-score, the pre-spike value and the
    spike's; whether it rose off a flat stretch (a spread under the floors of
    :func:`find_spikes`, where the z-score measures the flatness, not the jump)."""

    step: int
    zscore: float
    baseline: float
    recovered_at: int | None
    flat: bool = False
    peak: float = math.nan

    @property
    def jump(self) -> float | None:
        """The rise relative to the pre-spike value; None from (nearly) zero, where a relative
        size means nothing (a gradient norm of 1e-38 jumping to 250 is not "+2e40%")."""
        if not self.baseline:
            return None
        jump = (self.peak - self.baseline) / abs(self.baseline)
        return jump if abs(jump) < MAX_RELATIVE_JUMP else None

    def describe(self) -> str:
        """``41 sigma``; off a flat stretch the jump itself: ``jump from 2.3 to 2.8 (+22%)``."""
        if not self.flat:
            return f"{self.zscore:.0f} sigma"
        jump = self.jump
        rel = f" ({jump:+.0%})" if jump is not None else ""
        return f"jump from {self.baseline:.4g} to {self.peak:.4g}{rel} off a flat stretch"

    def evidence(self, sigma: float) -> tuple[float | None, float | None]:
        """(value, threshold) for a finding: the z-score against ``sigma``; off a flat stretch
        the relative jump and no threshold (a z-score there is no measurement)."""
        return (self.jump, None) if self.flat else (self.zscore, sigma)


def find_spikes(x: np.ndarray, sigma: float, window: int, min_history: int,
                min_range_fraction: float, recovery_steps: int) -> list[Spike]:
    """Steps where ``x`` jumps above its local trend by more than ``sigma`` noise units.

    The rolling z-score of step ``t`` is ``(x[t] - (x[t-1] + trend)) / spread`` with the trend
    and spread of :func:`trailing_noise` over the previous ``window`` steps — OLMo-core's
    "6 sigma over the previous 128 steps", with sigma measured from step-to-step changes so
    that the steep, steady decrease of a short probe neither hides a spike nor fakes one. A
    spike must also rise by at least ``min_range_fraction`` of the range ``x`` has covered
    so far, so noise on a converged, near-zero loss does not count; the spread is floored at
    :data:`SPREAD_FLOOR_FRACTION` of that range. Consecutive spike steps form one event,
    reported at its first step; an event is *recovered* when ``x`` falls back to within a
    quarter of the jump above the pre-spike value within ``recovery_steps``.
    """
    trend, noise = trailing_noise(x, window, min_history)
    finite = np.isfinite(x)
    running_max = np.maximum.accumulate(np.where(finite, x, -np.inf))
    running_min = np.minimum.accumulate(np.where(finite, x, np.inf))
    spikes: list[Spike] = []
    previous = -2
    for t in range(1, x.size):
        span = running_max[t - 1] - running_min[t - 1]
        # A flat stretch (MAD ~0) still has a scale: a fraction of the range so far.
        floor = SPREAD_FLOOR_FRACTION * span
        spread = max(noise[t], floor) if np.isfinite(noise[t]) else 0.0
        if not (finite[t] and finite[t - 1] and spread > 0):
            continue
        expected = x[t - 1] + trend[t]
        rise = x[t] - expected
        if rise > sigma * spread and rise >= min_range_fraction * span:
            if t != previous + 1:
                later = x[t + 1: t + 1 + recovery_steps]
                back = np.nonzero(np.isfinite(later) & (later <= x[t - 1] + 0.25 * rise))[0]
                spikes.append(Spike(t, float(rise / spread), float(x[t - 1]),
                                    int(t + 1 + back[0]) if back.size else None,
                                    flat=bool(noise[t] < max(
                                        floor, RELATIVE_SPREAD_FLOOR * abs(x[t - 1]))),
                                    peak=float(x[t])))
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
