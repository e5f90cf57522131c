"""The probe-loop policy every engine follows, written once.

* :class:`Schedule` — when to flush the statistics buffer (every ``flush_every`` steps and
  at the last), when to measure curvature (every ``curvature_every`` steps), and whether the
  time limit has passed;
* :func:`finish_record` — what a finished probe's record gets: its trace (only the steps it
  ran), its curvature measurements up to its first non-finite step, its wall time, and the
  timeout error when the time limit stopped it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stabcheck.engine.base import EngineSettings
from stabcheck.engine.failures import timeout_error
from stabcheck.engine.instruments import STAT_COLUMNS, to_jsonable
from stabcheck.records import ProbeRecord

CURVATURE_SERIES = ("steps", "sharpness", "preconditioned", "limit", "eos_ratio")


@dataclass
class Schedule:
    """The clock of one probe (or one stacked cohort): flushes, curvature, deadline."""

    settings: EngineSettings
    started: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float | None:
        timeout = self.settings.timeout_s
        return self.started + timeout if timeout else None

    def flush_due(self, done: int) -> bool:
        """After ``done`` steps: copy the buffer to the host and check it for NaN/Inf."""
        return done % self.settings.flush_every == 0 or done == self.settings.steps

    def curvature_due(self, done: int) -> bool:
        """After ``done`` steps: measure sharpness (``probe.curvature_every``)."""
        every = self.settings.curvature_every
        return bool(every) and done % every == 0  # type: ignore[operator]

    def past_deadline(self) -> bool:
        """``probe.timeout_s`` has passed (checked between steps)."""
        deadline = self.deadline
        return deadline is not None and time.perf_counter() > deadline

    def timeout_message(self, what: str, step: int) -> str:
        """Why ``what`` (a probe, a cohort) stopped at ``step``."""
        return f"{what} ran past probe.timeout_s={self.settings.timeout_s:g}s at step {step}"

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def fill_trace(record: ProbeRecord, stats: np.ndarray, layers: np.ndarray) -> None:
    """Copy host statistics into the record as JSON-ready lists."""
    record.trace = {name: to_jsonable(stats[:, i]) for i, name in enumerate(STAT_COLUMNS)}
    record.layer_grad_norms = to_jsonable(layers)


def drop_after(curvature: dict[str, Any] | None, last_step: int | None) -> None:
    """Forget the measurements of a probe's ``curvature`` record made after ``last_step``
    (its first non-finite step: engines notice that only at the next flush, and measure in
    between on parameters that are no longer finite)."""
    if not curvature or last_step is None or "steps" not in curvature:
        return
    keep = [i for i, step in enumerate(curvature["steps"]) if step <= last_step]
    for name in CURVATURE_SERIES:
        curvature[name] = [curvature[name][i] for i in keep]


def finish_record(record: ProbeRecord, stats: np.ndarray, layers: np.ndarray, steps_run: int,
                  wall_time_s: float, timeout: str | None = None) -> ProbeRecord:
    """Complete ``record``: the first ``steps_run`` rows of ``stats``/``layers`` as its trace,
    curvature measured after its first non-finite step dropped, its wall time, and
    ``timeout`` (a message) as a timeout outcome."""
    record.steps_run = steps_run
    fill_trace(record, stats[:steps_run], layers[:steps_run])
    drop_after(record.curvature, record.first_nonfinite_step)
    if timeout is not None:
        record.outcome = "timeout"
        record.error = timeout_error(timeout)
    record.wall_time_s = wall_time_s
    return record
