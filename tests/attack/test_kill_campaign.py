"""A SIGKILL campaign: one small audit killed at seeded-random moments — during start-up,
during a probe, right as a journal line is written, and once every probe is journaled (while
the report is written) — then ``--resume``-d each time until it finishes.

Expected: no journaled probe is ever lost (every probe seen after a kill is still there, with
the same record, after every later resume), none is journaled twice, and the final report has
the statuses, losses, findings and verdict of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from stabcheck.journal import JOURNAL_NAME
from tests.test_interrupt import assert_no_orphans, log_of, start, write
from tests.test_robustness import strip_timings

pytestmark = pytest.mark.slow

KILLS = 8
SEED = 20261202
MOMENTS = ("start-up", "probe", "journal write", "report")
# 6 probes (one diverges) of about 0.25 s each: a run is mostly start-up.
SWEEP = {"learning_rates": [0.01, 0.1, 80.0], "seeds": [0, 1], "batch_sizes": [16]}
TOTAL = 6


def journaled(out: Path) -> list[dict[str, Any]]:
    """The probe lines of the journal; a last line cut by the kill is not one."""
    path = out / JOURNAL_NAME
    if not path.exists():
        return []
    found = []
    for raw in path.read_bytes().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("type") == "probe":
            found.append(entry)
    return found


def _journal_size(out: Path) -> int:
    try:
        return (out / JOURNAL_NAME).stat().st_size
    except OSError:
        return -1


def _wait(proc: subprocess.Popen[bytes], until: Any, timeout: float = 180) -> bool:
    """Poll ``until()`` every millisecond; False when the audit ended first."""
    deadline = time.monotonic() + timeout
    while not until():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the audit made no progress"
        time.sleep(0.001)
    return True


def _kill_at(proc: subprocess.Popen[bytes], out: Path, moment: str,
             rng: random.Random) -> None:
    """SIGKILL the audit's process group at ``moment`` (unless it finished first)."""
    before = len(journaled(out))
    if moment == "start-up":
        time.sleep(rng.uniform(0.0, 2.0))  # importing torch, user code, building the data
    elif moment == "probe":
        if _wait(proc, lambda: _journal_size(out) > 0):
            time.sleep(rng.uniform(0.0, 1.0))
    elif moment == "journal write":
        size = _journal_size(out)
        _wait(proc, lambda: _journal_size(out) > max(size, 0) and
              len(journaled(out)) >= before)
    else:  # the report: every probe journaled, the report not yet (or half) written
        _wait(proc, lambda: len(journaled(out)) >= TOTAL)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert_no_orphans(proc.pid)


def _check_journal(out: Path, kept: dict[str, dict[str, Any]], outcomes: list[str]) -> None:
    """No probe journaled twice; every probe journaled before is still there, unchanged."""
    lines = journaled(out)
    keys = [entry["key"] for entry in lines]
    assert len(keys) == len(set(keys)), f"a probe journaled twice: {outcomes}"
    for key, entry in kept.items():
        assert any(e["key"] == key and strip_timings(e) == strip_timings(entry)
                   for e in lines), f"probe {key} lost: {outcomes}"
    kept.update({entry["key"]: entry for entry in lines})


def test_random_sigkills_then_resume_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    config = write(tmp_path, {"step_sleep": 0.02}, sweep=SWEEP,
                   probe={"steps": 12, "flush_every": 4})
    reference = tmp_path / "reference"
    expected_rc = start(config, reference, "--executor", "local").wait(timeout=300)
    assert expected_rc in (0, 1), log_of(reference)
    fresh = json.loads((reference / "report.json").read_text())
    assert sorted(p["status"] for p in fresh["probes"]).count("diverged") == 2

    rng = random.Random(SEED)
    plan = list(MOMENTS) * (KILLS // len(MOMENTS))
    rng.shuffle(plan)  # every kind of moment, in a seeded order, each at a random instant
    rounds = 1  # a round is one results directory, killed and resumed until it finishes
    out = tmp_path / "round1"
    kept: dict[str, dict[str, Any]] = {}  # every probe seen journaled in this round
    outcomes: list[str] = []
    landed = 0
    while True:
        # once every probe is journaled only the report is left: that run goes to the end
        moment = plan.pop(0) if plan and len(kept) < TOTAL else None
        if (out / JOURNAL_NAME).exists():
            again = ["--resume"]
        else:  # killed before the journal's header: start over
            again = ["--overwrite"] if out.exists() else []
        proc = start(config, out, "--executor", "local", *again)
        if moment is not None:
            _kill_at(proc, out, moment, rng)
        rc = proc.wait(timeout=300)
        outcomes.append(f"{out.name} {moment or 'to the end'}: rc {rc}")
        assert "Traceback" not in log_of(out), log_of(out)
        _check_journal(out, kept, outcomes)
        if rc == -signal.SIGKILL:
            landed += 1
            continue
        assert rc == expected_rc, (outcomes, log_of(out))
        resumed = json.loads((out / "report.json").read_text())
        assert resumed["complete"] is True and len(resumed["probes"]) == TOTAL
        for field in ("probes", "findings", "summary", "verdict", "exit_code"):
            assert strip_timings(resumed[field]) == strip_timings(fresh[field]), field
        if not plan:
            break
        rounds += 1  # this round is done: the next kills go to a fresh audit
        out, kept = tmp_path / f"round{rounds}", {}
    print(f"kill campaign: {landed} of {KILLS} SIGKILLs landed; {'; '.join(outcomes)} "
          f"(load average {os.getloadavg()[0]:.1f})")
    assert landed >= KILLS - 1, outcomes  # the kills hit a running audit
