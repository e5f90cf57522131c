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
