"""Ctrl-C (or SIGTERM) to the whole process group while a process-executor worker is still
starting up (issue 17 item 9): exit 130 with a partial report, no traceback.

The defect, re-tested after the scale-out merge: the parent blocked SIGINT around
``Process.start()``, but multiprocessing starts its resource tracker inside that call and
*unblocks* SIGINT and SIGTERM on the way out (``resource_tracker.ensure_running``), so the
first worker was spawned with nothing blocked. A signal during its start-up (Python start,
unpickling, importing torch: seconds) killed it with a ``KeyboardInterrupt`` traceback, and
the audit ended with exit 3, "the worker process died while starting up", and no report.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.test_interrupt import assert_no_orphans, log_of, start, write

pytestmark = pytest.mark.slow


def _spawned_worker(parent: int) -> bool:
    """Whether ``parent`` has a multiprocessing ``spawn`` child or the workers' fork server
    (which imports torch, then forks the worker: both are its start-up), not the resource
    tracker."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and (b"spawn_main" in cmd or b"forkserver" in cmd):
            return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_worker_starts_is_exit_130_with_a_partial_report(
        tmp_path: Path, sig: signal.Signals) -> None:
    config = write(tmp_path, {"step_sleep": 0.05})
    out = tmp_path / "r"
    proc = start(config, out, "--executor", "processes")
    deadline = time.monotonic() + 180
    while not _spawned_worker(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, log_of(out)
        time.sleep(0.005)
    time.sleep(0.1)  # the worker is importing stabcheck and torch (seconds, even unloaded)
    os.killpg(proc.pid, sig)  # a terminal's Ctrl-C / a scheduler's SIGTERM: the whole group
    assert proc.wait(timeout=120) == 130, log_of(out)
    assert "Traceback" not in log_of(out) and "died while starting up" not in log_of(out)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and report["exit_code"] == 130
    assert len(report["probes"]) < 5
    assert_no_orphans(proc.pid)
