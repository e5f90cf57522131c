"""Ctrl-C, a second Ctrl-C, and SIGKILL then --resume, against a real `stabcheck audit`
subprocess in its own process group (as a terminal would run it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stabcheck.journal import JOURNAL_NAME, read_journal
from tests.conftest import TINY, deep_update
from tests.test_robustness import FAULTS, strip_timings

pytestmark = pytest.mark.slow


def write(tmp_path: Path, optimizer: dict[str, Any], **updates: Any) -> Path:
    shutil.copy(FAULTS, tmp_path / "faults.py")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": [0.01, 0.02, 0.03, 0.05, 0.1],
                                       "seeds": [0], "batch_sizes": [16]},
                             "probe": {"steps": 20, "flush_every": 5}})
    cfg["optimizer"] = {"name": "./faults.py:FaultySGD", "kwargs": optimizer}
    cfg = deep_update(cfg, updates)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def start(config: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (out.parent / f"{out.name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "stabcheck", "audit", str(config), "--out", str(out),
         "--format", "text", *args],
        cwd=config.parent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "NO_COLOR": "1"})


def probes_in(out: Path) -> int:
    path = out / JOURNAL_NAME
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().splitlines() if line.startswith(b'{"type":"probe"'))


def wait_for_probes(proc: subprocess.Popen[bytes], out: Path, n: int,
                    timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probes_in(out)
        if found >= n:
            return found
        assert proc.poll() is None, f"audit ended early: {log_of(out)}"
        time.sleep(0.05)
    raise AssertionError(f"no {n} probes journaled in {timeout}s: {log_of(out)}")


def log_of(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")


def group_members(pgid: int) -> list[str]:
    """Live processes in process group ``pgid`` (from /proc), as 'pid cmdline'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(f"{entry.name} {cmd}")
    return found


def assert_no_orphans(pgid: int) -> None:
    deadline = time.monotonic() + 15
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(pgid) == []


def assert_journal_intact(out: Path) -> None:
    raw = (out / JOURNAL_NAME).read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.splitlines()]  # every line whole
    assert lines[0]["type"] == "header"
    assert not read_journal(out).truncated_tail


@pytest.mark.parametrize("executor", ["local", "process"])
def test_first_sigint_finishes_the_running_probe_and_writes_an_incomplete_report(
        tmp_path: Path, executor: str) -> None:
    config = write(tmp_path, {"step_sleep": 0.05})  # about 1 s per probe
    out = tmp_path / "r"
    proc = start(config, out, "--executor", executor)
    seen = wait_for_probes(proc, out, 1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    assert proc.wait(timeout=120) == 130, log_of(out)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and report["complete"] is False
    assert report["exit_code"] == 130
    assert seen <= len(report["probes"]) < 5
    # the probe that was running got its grace period and finished normally
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert "INCOMPLETE" in log_of(out) and "Traceback" not in log_of(out)
    assert_journal_intact(out)
    assert read_journal(out).events[-1]["event"] == "interrupted"
    assert_no_orphans(proc.pid)

    # ... and resuming it gives the report of an audit that was never interrupted
    assert start(config, out, "--executor", executor, "--resume").wait(timeout=300) == 0
    reference = tmp_path / "reference"
    assert start(config, reference, "--executor", executor).wait(timeout=300) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["complete"] is True and not any("INCOMPLETE" in n for n in resumed["notes"])
    assert strip_timings(resumed) == strip_timings(
        json.loads((reference / "report.json").read_text()))


@pytest.mark.parametrize("executor", ["local", "process"])
def test_second_sigint_forces_the_exit(tmp_path: Path, executor: str) -> None:
    config = write(tmp_path, {"hang_lr": 0.02})  # the second probe hangs inside a step
    out = tmp_path / "r"
    proc = start(config, out, "--executor", executor, "--grace", "300")
    wait_for_probes(proc, out, 1)
    time.sleep(1.0)  # the second probe is now hung
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.5)
    assert proc.poll() is None  # still in its (long) grace period
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log_of(out)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and len(report["probes"]) == 1
    assert "Traceback" not in log_of(out)
    assert_journal_intact(out)
    assert_no_orphans(proc.pid)


@pytest.mark.parametrize("executor", ["local", "process"])
def test_sigkill_then_resume_gives_the_uninterrupted_report(tmp_path: Path,
                                                           executor: str) -> None:
    config = write(tmp_path, {"step_sleep": 0.03, "raise_lr": 0.05, "raise_at_step": 3},
                   sweep={"seeds": [0, 1]})
    reference = tmp_path / "reference"
    full = start(config, reference, "--executor", executor)
    assert full.wait(timeout=300) == 1, log_of(reference)  # the raising probes fail it

    out = tmp_path / "r"
    proc = start(config, out, "--executor", executor)
    wait_for_probes(proc, out, 3)
    if executor == "process":
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone: its worker must follow it
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert_no_orphans(proc.pid)
    assert not (out / "report.json").exists()

    resumed = start(config, out, "--executor", executor, "--resume")
    assert resumed.wait(timeout=300) == 1, log_of(out)
    first = json.loads((reference / "report.json").read_text())
    second = json.loads((out / "report.json").read_text())
    assert second["complete"] is True and len(second["probes"]) == 10
    assert strip_timings(first) == strip_timings(second)


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    config = write(tmp_path, {})
    out = tmp_path / "r"
    assert start(config, out).wait(timeout=300) == 0, log_of(out)
    config.write_text(config.read_text().replace("steps: 20", "steps: 21"))
    again = start(config, out, "--resume")
    assert again.wait(timeout=120) == 2
    lines = log_of(out).strip().splitlines()
    assert lines[-1].startswith("error: ") and "different config" in lines[-1]


def two_cohorts(tmp_path: Path, optimizer: dict[str, Any]) -> Path:
    return write(tmp_path, optimizer, sweep={"batch_sizes": [16, 32]})


def test_sigint_during_a_parallel_run_then_resume_gives_the_in_process_report(
        tmp_path: Path) -> None:
    """Two cohorts on two workers at once: Ctrl-C lets both running probes finish, leaves an
    intact journal and no process behind; --resume completes it, and the report equals an
    uninterrupted in-process audit's."""
    config = two_cohorts(tmp_path, {"step_sleep": 0.05})
    out = tmp_path / "r"
    proc = start(config, out, "--executor", "processes", "--workers", "2")
    seen = wait_for_probes(proc, out, 1)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log_of(out)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and seen <= len(report["probes"]) < 10
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert {p["batch_size"] for p in report["probes"]} <= {16, 32}
    assert "Traceback" not in log_of(out)
    assert_journal_intact(out)
    assert_no_orphans(proc.pid)

    assert start(config, out, "--executor", "processes", "--workers", "2",
                 "--resume").wait(timeout=300) == 0, log_of(out)
    reference = tmp_path / "reference"
    assert start(config, reference, "--executor", "local").wait(timeout=300) == 0
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["complete"] is True and len(resumed["probes"]) == 10
    assert strip_timings(resumed) == strip_timings(
        json.loads((reference / "report.json").read_text()))


def test_sigkill_of_a_parallel_audit_takes_its_workers_and_fork_server_along(
        tmp_path: Path) -> None:
    config = two_cohorts(tmp_path, {"step_sleep": 0.05})
    out = tmp_path / "r"
    proc = start(config, out, "--executor", "processes", "--workers", "2")
    wait_for_probes(proc, out, 1)
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone: fork server and workers follow
    proc.wait(timeout=30)
    assert_no_orphans(proc.pid)
    resumed = start(config, out, "--resume")  # auto: too little work to spread, in-process
    assert resumed.wait(timeout=300) == 0, log_of(out)
    assert len(json.loads((out / "report.json").read_text())["probes"]) == 10
