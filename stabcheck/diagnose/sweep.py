"""Sweep-level analysis: what the grid as a whole says about the training setup."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from stabcheck.diagnose.context import Context
from stabcheck.findings import Finding

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis


def cells(probes: list[ProbeDiagnosis]) -> dict[tuple[int, float], list[ProbeDiagnosis]]:
    """Probes grouped by (batch size, lr): one cell of the grid, all its seeds."""
    grouped: dict[tuple[int, float], list[ProbeDiagnosis]] = defaultdict(list)
    for p in probes:
        grouped[(p.record.batch_size, p.record.lr)].append(p)
    return dict(grouped)


def max_stable_lr(probes: list[ProbeDiagnosis]) -> dict[int, float | None]:
    """Per batch size: the largest LR at which every seed stayed healthy (None if none did)."""
    out: dict[int, float | None] = {}
    for (bs, lr), members in sorted(cells(probes).items()):
        out.setdefault(bs, None)
        if all(m.status == "healthy" for m in members):
            current = out[bs]
            out[bs] = lr if current is None else max(current, lr)
    return out


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """The sweep summary (for reports and JSON) and sweep-level findings."""
    counts = Counter(p.status for p in probes)
    summary: dict[str, Any] = {
        "probes": len(probes),
        "by_status": {s: counts.get(s, 0) for s in
                      ("healthy", "unstable", "diverged", "error", "timeout", "oom")},
        "max_stable_lr": {str(bs): lr for bs, lr in max_stable_lr(probes).items()},
    }
    return summary, []
