"""SIGTERM is a Ctrl-C (issue 17 item 27), and a stopped multi-worker audit resumes on
another executor (issue 16: one journal)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.test_interrupt import (
    assert_journal_intact,
    assert_no_orphans,
    log_of,
    start,
    wait_for_probes,
    write,
)
from tests.test_robustness import strip_timings

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_sigterm_writes_the_partial_report_with_exit_130(tmp_path: Path,
                                                         executor: str) -> None:
    config = write(tmp_path, {"step_sleep": 0.05})  # about 1 s per probe
    out = tmp_path / "r"
    proc = start(config, out, "--executor", executor)
    seen = wait_for_probes(proc, out, 1)
    os.killpg(proc.pid, signal.SIGTERM)  # a CI runner cancelling the job: the whole group
    assert proc.wait(timeout=120) == 130, log_of(out)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and report["exit_code"] == 130
    assert seen <= len(report["probes"]) < 5
    # the running probe finished in its grace period: no worker was killed by the SIGTERM
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert "Traceback" not in log_of(out)
    assert_journal_intact(out)
    assert_no_orphans(proc.pid)


def test_a_two_worker_audit_stopped_by_ctrl_c_resumes_under_local(tmp_path: Path) -> None:
    config = write(tmp_path, {"step_sleep": 0.05},
                   sweep={"learning_rates": [0.01, 0.1], "seeds": [0],
                          "batch_sizes": [8, 16, 24]})
    out = tmp_path / "r"
    proc = start(config, out, "--executor", "processes", "--workers", "2")
    wait_for_probes(proc, out, 1)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log_of(out)
    assert_journal_intact(out)
    assert_no_orphans(proc.pid)
    assert len(json.loads((out / "report.json").read_text())["probes"]) < 6
    assert start(config, out, "--executor", "local", "--resume").wait(timeout=300) == 0
    reference = tmp_path / "reference"
    assert start(config, reference, "--executor", "local").wait(timeout=300) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["complete"] is True
    assert strip_timings(resumed) == strip_timings(
        json.loads((reference / "report.json").read_text()))
