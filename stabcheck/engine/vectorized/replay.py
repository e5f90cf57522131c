"""Where a stacked member is unstacked into a sequential probe: to measure its curvature, and
to finish it exactly as the reference engine would once it showed non-finite statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from stabcheck.engine.base import EngineEvents
from stabcheck.engine.curvature.lipschitz import safe_lipschitz
from stabcheck.engine.curvature.tracker import CurvatureTracker
from stabcheck.engine.instruments import first_nonfinite, rng_preserved
from stabcheck.engine.loop import Schedule, finish_record
from stabcheck.engine.sequential import SequentialProbe, mark_nonfinite
from stabcheck.engine.vectorized.stacked import CohortRun
from stabcheck.records import ProbeRecord


class CohortCurvature:
    """Sharpness tracking (``probe.curvature_every``) for the members of a stacked cohort.

    At each measurement every live member is unstacked into a sequential probe (its model
    and optimizer state, exactly as the sequential engine would hold them) and measured by
    its own :class:`~stabcheck.engine.curvature.CurvatureTracker`, which keeps its warm-start
    eigenvectors from one measurement to the next. The Hessian-vector products run one member
    at a time; training stays stacked.
    """

    def __init__(self, run: CohortRun) -> None:
        self.run = run
        self.trackers: dict[int, CurvatureTracker] = {}

    def measure(self, step: int) -> None:
        """Measure every live member after ``step`` updates (before step ``step``)."""
        run = self.run
        settings = run.settings
        snap = run.snapshot()
        with rng_preserved():
            for member in run.members:
                probe = run.sequential_probe(snap, member)
                tracker = self.trackers.get(member)
                if tracker is None:
                    spec = run.probes[member]
                    tracker = CurvatureTracker(
                        probe.model, run.problem.loss_fn, run.data, probe.optimizer, spec.seed,
                        run.device, settings.curvature_batch or spec.batch_size)
                    tracker.release()  # each measurement brings its own unstacked member
                    self.trackers[member] = tracker
                lr = float(run.lr64[min(step, settings.steps - 1), member])
                tracker.measure(step, lr, probe.model, probe.optimizer)
                del probe

    def record(self, member: int, lipschitz_final: float | None) -> dict[str, Any] | None:
        """The member's ``curvature`` record, or ``None`` when it was never measured."""
        tracker = self.trackers.get(member)
        if tracker is None:
            return None
        out = tracker.finish()
        out["lipschitz_final"] = lipschitz_final
        return out


def finish_sequentially(probe: SequentialProbe, record: ProbeRecord, head: tuple[Any, Any],
                        start: int, schedule: Schedule, events: EngineEvents,
                        share: float) -> None:
    """Finish a member that showed non-finite statistics, as the sequential engine would.

    ``probe`` holds the member's state at step ``start`` (the last flush) and ``head`` its
    vectorized statistics before that. Steps ``start…`` are replayed with the sequential
    engine's statistics (float64, or float32 where that is exact); the first non-finite one
    ends the probe and is localised, as in :func:`~stabcheck.engine.sequential.run_probe`.
    If there is none (a float32 overflow of a finite, exploding norm), the probe goes on
    sequentially to the end.
    """
    settings = schedule.settings
    snap = probe.snapshot(start)
    probe.buffer.flushed = start  # rows before ``start`` come from the vectorized run
    done = start
    for step in range(start, settings.steps):
        probe.step(step)
        done = step + 1
        if not schedule.flush_due(done):
            continue
        lo = probe.buffer.flushed
        chunk, _ = probe.buffer.flush(done)
        bad = first_nonfinite(chunk)
        if bad is not None:
            bad_step = lo + bad.row
            done = bad_step + 1
            mark_nonfinite(record, probe, snap, bad_step, bad)
            break
        snap = probe.snapshot(done)
    if record.curvature is not None:
        record.curvature["lipschitz_final"] = safe_lipschitz(probe.model)
    record.notes.append(f"steps {start}-{done - 1} replayed with the sequential engine after "
                        "non-finite statistics")
    stats = np.concatenate([head[0][:start], probe.buffer.host_stats[start:done]])
    layers = np.concatenate([head[1][:start], probe.buffer.host_layers[start:done]])
    events.record(finish_record(record, stats, layers, done, schedule.elapsed() * share))
