"""What the audit is doing now, in the user's words: the cohort phase lines, and what a first
Ctrl-C is waiting for.

Executors report each cohort as it starts (:attr:`stabcheck.executors.base.Job.on_cohort`)
and each probe as it finishes; this keeps count of which cohorts are still running, and which
of their probes, so that the interrupt message can name them.
"""

from __future__ import annotations

from stabcheck.plan import Cohort, ProbeSpec


def _span(values: list[float] | list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g} to {high:g}"


class CohortWatch:
    """The cohorts of one audit: which are running and which of their probes are left."""

    def __init__(self, cohorts: list[Cohort], together: bool) -> None:
        self.count = len(cohorts)
        self.together = together  # the engine trains a cohort's probes at once (vectorized)
        self.number = {p.index: k for k, c in enumerate(cohorts, 1) for p in c.probes}
        self.left: dict[int, list[ProbeSpec]] = {}

    def started(self, cohort: Cohort) -> str:
        """Note that ``cohort`` (or what is left of it) started; return its phase line."""
        k = self.number.get(cohort.probes[0].index, 0) if cohort.probes else 0
        self.left[k] = list(cohort.probes)
        members = len(cohort.probes)
        return (f"cohort {k} of {self.count} ({members} member{'s' if members != 1 else ''}: "
                f"bs={cohort.batch_size}, lr {_span([p.lr for p in cohort.probes])}, seed "
                f"{_span([p.seed for p in cohort.probes])})")

    def finished(self, index: int) -> None:
        """Probe ``index`` finished (and was journaled)."""
        k = self.number.get(index)
        left = self.left.get(k, []) if k is not None else []
        left[:] = [p for p in left if p.index != index]
        if k is not None and not left:
            self.left.pop(k, None)

    def waiting_for(self) -> str:
        """What a stop now waits for: the running cohorts, or the running probe of each."""
        if not self.left:  # between cohorts, or an executor that does not report them (ray)
            return "the running probes"
        parts = []
        for k, probes in sorted(self.left.items()):
            if self.together:
                parts.append(f"cohort {k} of {self.count} ({len(probes)} probes training "
                             "together)")
            else:
                parts.append(f"probe {probes[0].label} (cohort {k} of {self.count})")
        return ", ".join(parts)
