"""The ground-truth labelling rule, applied to a plain loop's loss curve.

Written down (README.md, "Labelling rule") before stabcheck's answers were looked at, and
never tuned to them. Pure Python over a list of per-step losses (``None``/NaN/Inf for a
non-finite step); the loss of step ``t`` is measured on step ``t``'s batch *before* update
``t``, so ``losses[0]`` is the loss at init.
"""

from __future__ import annotations

import math
from statistics import median

LABELS = ("healthy", "borderline", "diverged")
FINAL_STEPS = 5        # the final loss is the median of the last 5 steps (mini-batch noise)
HEALTHY_DECREASE = 0.9  # healthy: final below 0.9 x initial ("clearly below")
TRANSIENT_FACTOR = 2.0  # healthy: no step's loss above 2 x initial
RUNAWAY_FACTOR = 3.0    # diverged: final above 3 x the best (smoothed) loss seen ...
RUNAWAY_FLOOR = 0.1     # ... and above it by at least 10% of the initial loss


def label(losses: list[float | None]) -> tuple[str, dict[str, float | None]]:
    """``(label, measures)`` for one probe's loss curve."""
    values = [math.nan if v is None else float(v) for v in losses]
    if not values or not all(math.isfinite(v) for v in values):
        return "diverged", {"initial": values[0] if values else None, "final": None,
                            "best": None, "peak": None}
    initial = values[0]
    final = median(values[-FINAL_STEPS:])
    smoothed = [median(values[max(0, i - FINAL_STEPS + 1): i + 1])
                for i in range(FINAL_STEPS - 1, len(values))] or values
    best = min(smoothed)
    peak = max(values)
    measures: dict[str, float | None] = {"initial": initial, "final": final, "best": best,
                                         "peak": peak}
    if final > initial or (final > RUNAWAY_FACTOR * best
                           and final - best > RUNAWAY_FLOOR * abs(initial)):
        return "diverged", measures
    if final < HEALTHY_DECREASE * initial and peak <= TRANSIENT_FACTOR * initial:
        return "healthy", measures
    return "borderline", measures
