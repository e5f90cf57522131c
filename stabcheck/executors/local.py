"""The in-process executor: cohorts run in the audit's own process, one after another.

No start-up cost and nothing to pickle, so it is the default on CPU without a time limit.
What it cannot do: stop a probe hung *inside* a training step (the engine checks
``probe.timeout_s`` only between steps), or survive a crash of the process itself (a
segfault in an extension, a CUDA device-side assert that poisons the context). The
process executor (:mod:`stabcheck.executors.process`) does both.

On the first Ctrl-C the running probe finishes (within the grace period) and is journaled;
the next one is abandoned at its first step report.
"""

from __future__ import annotations

from stabcheck.engine import RecordSink, StepSink
from stabcheck.executors.base import Interrupts, Job, run_cohorts, warm_up
from stabcheck.plan import Cohort


class LocalExecutor:
    """Runs every cohort in this process."""

    name = "local"
    in_process = True

    def run(self, job: Job, cohorts: list[Cohort], on_record: RecordSink,
            on_steps: StepSink, control: Interrupts) -> None:
        """Run ``cohorts`` here until done or until ``control`` asks to stop."""
        warm_up()
        run_cohorts(job.engine, job.problem, cohorts, job.settings, job.keys, job.data,
                    on_record, on_steps, lambda: control.stop_requested, on_note=job.on_note,
                    on_cohort=lambda i: job.on_cohort(cohorts[i]))
