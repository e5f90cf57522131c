"""What the plots show, taken from a finished result: shared by the HTML and PNG reports.

Nothing here computes a statistic. Spike steps come from the findings that name them (which
codes mark which plot is each code's registry entry, ``CodeInfo.plots``); the point where a
probe went non-finite is the engine's ``first_nonfinite_step``. Long traces are decimated for
display only: per bucket the lowest and highest point survive, and so do marked steps and the
last finite point, so a spike or a blow-up never disappears from the picture.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

import stabcheck.diagnose  # noqa: F401  (registers every finding code)
from stabcheck.findings import REGISTRY

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis
    from stabcheck.result import AuditResult

MAX_POINTS = 400
# Finding codes whose ``steps`` are marked on a plotted column: from each code's registry
# entry (CodeInfo.plots).
MARK_CODES: dict[str, tuple[str, ...]] = {
    column: tuple(code for code, info in sorted(REGISTRY.items()) if column in info.plots)
    for column in ("loss", "grad_norm", "sharpness")
}
ADAPTIVE_RULES = ("adam", "adamw", "rmsprop")


@dataclass
class Trace:
    """One probe's column, ready to draw."""

    seed: int
    steps: np.ndarray
    values: np.ndarray
    marks: list[int] = field(default_factory=list)
    end: int | None = None


@dataclass
class CurvatureTrace:
    """One probe's sharpness measurements, and the stability limit they are judged against."""

    seed: int
    steps: np.ndarray
    values: np.ndarray
    what: str  # "sharpness" or "preconditioned sharpness"
    limit: np.ndarray | None = None  # per-measurement limit, when the engine recorded one
    marks: list[int] = field(default_factory=list)


Cells = dict[tuple[int, float], list["ProbeDiagnosis"]]


def grid(result: AuditResult) -> tuple[list[int], list[float], Cells]:
    """Batch sizes, learning rates, and the probes of each (batch size, lr) cell by seed."""
    probes = result.diagnosis.probes
    cells: Cells = defaultdict(list)
    for p in probes:
        cells[(p.record.batch_size, p.record.lr)].append(p)
    for members in cells.values():
        members.sort(key=lambda m: m.record.seed)
    sizes = sorted({p.record.batch_size for p in probes})
    lrs = sorted({p.record.lr for p in probes})
    return sizes, lrs, dict(cells)


def seeds(result: AuditResult) -> list[int]:
    """Every seed of the audit, sorted (a seed keeps its colour across plots)."""
    return sorted({p.record.seed for p in result.diagnosis.probes})


def marked_steps(probe: ProbeDiagnosis, column: str) -> list[int]:
    """Steps the findings of ``probe`` name for ``column`` (e.g. loss spikes)."""
    codes = MARK_CODES.get(column, ())
    return sorted({int(s) for f in probe.findings if f.code in codes for s in f.steps})


def nonfinite_step(probe: ProbeDiagnosis) -> int | None:
    """The step where the probe's statistics went non-finite, if they did."""
    record = probe.record
    if record.first_nonfinite_step is not None:
        return int(record.first_nonfinite_step)
    return None


def decimate(values: np.ndarray, keep: list[int] | tuple[int, ...] = (),
             max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices to draw: all of them for short series, else per bucket the lowest and the
    highest finite point, plus the ends, the last finite point and every index in ``keep``."""
    n = values.size
    if n <= max_points:
        return np.arange(n)
    chosen = {0, n - 1}
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size:
        chosen.add(int(finite[-1]))
    chosen.update(i for i in keep if 0 <= i < n)
    buckets = max(1, max_points // 2)
    for chunk in np.array_split(np.arange(n), buckets):
        part = values[chunk]
        ok = np.isfinite(part)
        if not ok.any():
            chosen.add(int(chunk[0]))  # keep the gap visible
            continue
        masked_lo = np.where(ok, part, np.inf)
        masked_hi = np.where(ok, part, -np.inf)
        chosen.add(int(chunk[int(np.argmin(masked_lo))]))
        chosen.add(int(chunk[int(np.argmax(masked_hi))]))
    return np.array(sorted(chosen), dtype=np.int64)


def trace(probe: ProbeDiagnosis, column: str, max_points: int = MAX_POINTS) -> Trace:
    """A probe's ``column`` (``loss``, ``grad_norm``, …) decimated for display."""
    values = probe.record.series(column)
    marks = [s for s in marked_steps(probe, column) if s < values.size]
    index = decimate(values, marks, max_points)
    return Trace(seed=probe.record.seed, steps=index, values=values[index], marks=marks,
                 end=nonfinite_step(probe))


def _floats(values: Any) -> np.ndarray:
    out = []
    for v in values or []:
        try:
            f = float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            f = math.nan
        out.append(f)
    return np.array(out, dtype=np.float64)


def curvature_trace(probe: ProbeDiagnosis) -> CurvatureTrace | None:
    """The sharpness a probe measured (``record.curvature``), or None where it has none.

    For adaptive optimizers the preconditioned sharpness is the quantity the stability limit
    applies to, so it is shown when the engine recorded it.
    """
    curv = probe.record.curvature
    if not isinstance(curv, dict):
        return None
    steps = curv.get("steps")
    values = curv.get("sharpness")
    what = "sharpness"
    if curv.get("rule") in ADAPTIVE_RULES and curv.get("preconditioned"):
        values, what = curv.get("preconditioned"), "preconditioned sharpness"
    if not isinstance(steps, list) or not isinstance(values, list) or not steps:
        return None
    n = min(len(steps), len(values))
    step_arr = _floats(steps[:n])
    value_arr = _floats(values[:n])
    if not np.isfinite(value_arr).any() or not np.isfinite(step_arr).all():
        return None
    limit = None
    raw_limit = curv.get("limit")
    if isinstance(raw_limit, list) and len(raw_limit) >= n:
        limit = _floats(raw_limit[:n])
    marks = [s for s in marked_steps(probe, "sharpness") if s in set(step_arr.tolist())]
    return CurvatureTrace(seed=probe.record.seed, steps=step_arr, values=value_arr, what=what,
                          limit=limit, marks=marks)


def grad_clip(result: AuditResult) -> float | None:
    """The configured ``probe.grad_clip`` (None when clipping is off)."""
    value = (result.config.get("probe") or {}).get("grad_clip")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def steps_planned(members: list[ProbeDiagnosis]) -> int:
    """The x-axis extent of a cell: the planned steps of its probes."""
    return max((m.record.steps_planned for m in members), default=1)


def median_final_loss(members: list[ProbeDiagnosis]) -> float | None:
    """The cell's median final loss across its seeds, as the diagnosis summarised it (None
    if no seed has one)."""
    cell = members[0].cell if members else None
    return cell.median_final_loss if cell is not None else None
