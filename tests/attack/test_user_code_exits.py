"""User code that ends its process: ``sys.exit()`` and ``os._exit()`` (issue 17 items 1, 5).

Never exit 0, never a traceback: in a worker process (``--executor processes``) the worker's
death is that probe's ``error`` and the audit goes on; in the audit's own process (factories,
init checks, probes under ``--executor local``) the audit stops with exit 3 and a partial
report. Before the fix, ``os._exit(0)`` in the init checks (run in the parent under every
executor) ended stabcheck with exit 0 and no report: a CI gate read it as passed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, deep_update

pytestmark = pytest.mark.slow

QUITS = '''
import multiprocessing, os, sys
from pathlib import Path
from torch import nn

MARK = Path(__file__).with_name("quit.once")

class Quits(nn.Linear):
    calls = 0
    def forward(self, x):
        Quits.calls += 1
        where = os.environ["WHERE"]  # "worker": only in a worker process; "any": anywhere
        in_worker = multiprocessing.parent_process() is not None
        after = int(os.environ["AFTER"])  # forwards that run before it quits
        if Quits.calls > after and not MARK.exists() and (where == "any" or in_worker):
            MARK.write_text("x")  # once: the next worker trains normally
            if os.environ["HOW"] == "sys.exit":
                sys.exit(0)
            os._exit(0)
        return super().forward(x)

def build():
    return Quits(4, 3)
'''


def _audit(tmp_path: Path, executor: str, how: str, where: str, after: int = 3
           ) -> tuple[subprocess.CompletedProcess[str], Path]:
    (tmp_path / "quits.py").write_text(QUITS, encoding="utf-8")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": [0.01, 0.03, 0.1], "seeds": [0],
                                       "batch_sizes": [16]},
                             "probe": {"steps": 6, "flush_every": 3}})
    cfg["model"] = {"factory": "./quits.py:build", "kwargs": {}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    out = tmp_path / "r"
    done = subprocess.run(
        [sys.executable, "-m", "stabcheck", "audit", str(path), "--out", str(out),
         "--executor", executor, "--engine", "sequential", "--format", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "HOW": how, "WHERE": where,
             "AFTER": str(after)})
    assert "Traceback" not in done.stderr, done.stderr
    return done, out


@pytest.mark.parametrize("how", ["sys.exit", "os._exit"])
def test_exit_in_a_worker_is_that_probes_error_and_the_audit_goes_on(tmp_path: Path,
                                                                     how: str) -> None:
    done, _ = _audit(tmp_path, "processes", how, "worker")
    assert done.returncode == 1, done.stderr  # an error probe fails the gate; never 0
    probes = json.loads(done.stdout)["probes"]
    assert sorted(p["status"] for p in probes) == ["error", "healthy", "healthy"]
    error = next(p["error"] for p in probes if p["status"] == "error")
    expected = "sys.exit(0)" if how == "sys.exit" else "worker process died: exit status 0"
    assert expected in error["message"], error


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_os_exit_0_in_this_process_is_exit_3_with_a_partial_report(tmp_path: Path,
                                                                   executor: str) -> None:
    # The second forward in the parent: the init checks' (the init curvature's budget keeps the
    # parent's forwards few, so "after 3" would land in a worker under the processes executor).
    done, out = _audit(tmp_path, executor, "os._exit", "any", after=1)
    assert done.returncode == 3, done.stderr
    assert "SystemExit(0)" in done.stderr.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "incomplete" and report["complete"] is False
