"""Progress in CI mode (no TTY): plain lines whose steps count the whole audit."""

from __future__ import annotations

import io
import re

from rich.console import Console

from stabcheck.records import ProbeRecord
from stabcheck.report.progress import PlainProgress


def _record(index: int, outcome: str, steps_run: int) -> ProbeRecord:
    return ProbeRecord(lr=0.1, seed=index, batch_size=8, index=index, key=f"k{index}",
                       outcome=outcome, steps_planned=100, steps_run=steps_run,
                       trace={"loss": [1.0] * steps_run},
                       first_nonfinite_step=steps_run if outcome == "nonfinite" else None,
                       nonfinite_what="loss" if outcome == "nonfinite" else None)


def test_plain_lines_count_steps_of_the_whole_audit() -> None:
    buf = io.StringIO()
    progress = PlainProgress(Console(file=buf, width=200, color_system=None), verbose=False)
    progress.start(total=3, done=0, steps_per_probe=100)
    # a vectorized cohort of two reports both members' steps together
    progress.steps(2 * 30)
    progress.probe_done(_record(0, "nonfinite", 30))  # stopped early: 70 steps never run
    progress.steps(70)
    progress.probe_done(_record(1, "completed", 100))
    progress.steps(100)
    progress.probe_done(_record(2, "completed", 100))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "running 3 probes of 100 steps"
    counts = [re.search(r"steps (\d+)/(\d+)", line).groups() for line in lines[1:]]
    assert counts == [("130", "300"), ("200", "300"), ("300", "300")]
    assert "\x1b[" not in buf.getvalue()
    assert all("ETA" in line for line in lines[1:])
    assert lines[1].startswith("[1/3] ") and "non-finite loss at step 30" in lines[1]


def test_phase_clock_charges_time_to_phases_and_cohorts_to_training(monkeypatch) -> None:
    from stabcheck.report import progress as module

    now = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    clock = module.PhaseClock()
    for text, spent in (("building the model and data", 2.0), ("init checks, seed 0", 0.5),
                        ("curvature at init, seed 0", 0.25), ("init checks, seed 1", 0.5),
                        ("curvature at init, seed 1", 0.25), ("training 4 probes in 2", 0.0),
                        ("cohort 1 of 2 (2 members)", 3.0), ("cohort 2 of 2 (2 members)", 4.0),
                        ("report", 0.125)):
        clock.enter(text)
        now[0] += spent
    assert clock.summary() == ("timings: building 2.00s · init checks 1.00s · curvature at init "
                               "0.50s · training 7.00s · report 0.12s")


def test_rich_progress_keeps_the_bar_short_and_prints_phases_and_timings_with_v() -> None:
    from stabcheck.report.progress import RichProgress

    buf = io.StringIO()
    progress = RichProgress(Console(file=buf, width=80, force_terminal=True, color_system=None),
                            verbose=True)
    progress.start(total=2, done=0, steps_per_probe=10)
    progress.phase("cohort 1 of 1 (2 members: bs=8, lr 0.01 to 0.1, seed 0)")
    assert progress.bar.tasks[0].description == "cohort 1 of 1"
    progress.stop()
    progress.phase("report")
    progress.finish()
    text = buf.getvalue()
    assert "-- cohort 1 of 1 (2 members: bs=8, lr 0.01 to 0.1, seed 0)" in text
    assert "timings: training " in text and " · report " in text
