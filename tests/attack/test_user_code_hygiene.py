"""User code cannot break the audit's own process (issue 17 items 10, 13, 18): its print()
stays off stdout, its KeyboardInterrupt in a worker is a probe status, not a traceback, and
its stray threads do not keep the process alive after the verdict."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, deep_update

pytestmark = pytest.mark.slow

NOISY = '''
import multiprocessing, os, sys, threading, time
import torch
from torch import nn

class Noisy(nn.Linear):
    calls = 0
    def forward(self, x):
        Noisy.calls += 1
        if Noisy.calls == 1:
            print("hello from forward")                 # Python level
            os.write(1, b"raw bytes on fd 1\\n")         # file-descriptor level
            sys.stdout.flush()
        in_worker = multiprocessing.parent_process() is not None
        if os.environ.get("RAISE_KI") and in_worker and Noisy.calls == 3:
            raise KeyboardInterrupt
        return super().forward(x)

def build():
    print("building the model")
    if os.environ.get("STRAY_THREAD"):
        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    return Noisy(4, 3)
'''


def config(tmp_path: Path) -> Path:
    (tmp_path / "noisy.py").write_text(textwrap.dedent(NOISY), encoding="utf-8")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": [0.01, 0.1], "seeds": [0],
                                       "batch_sizes": [16]},
                             "probe": {"steps": 6}})
    cfg["model"] = {"factory": "./noisy.py:build", "kwargs": {}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def audit(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "stabcheck", "audit", str(config(tmp_path)),
                           "--out", str(tmp_path / "r"), "--format", "json",
                           "--engine", "sequential", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "NO_COLOR": "1", **env})


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_user_print_goes_to_stderr_and_json_on_stdout_parses(tmp_path: Path,
                                                             executor: str) -> None:
    done = audit(tmp_path, "--executor", executor)
    report = json.loads(done.stdout)  # nothing but the report on stdout
    assert len(report["probes"]) == 2
    assert "hello from forward" in done.stderr and "raw bytes on fd 1" in done.stderr
    assert "building the model" in done.stderr


def test_keyboard_interrupt_from_user_code_in_a_worker_is_a_probe_status(
        tmp_path: Path) -> None:
    done = audit(tmp_path, "--executor", "processes", RAISE_KI="1")
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    statuses = sorted(p["status"] for p in report["probes"])
    assert "error" in statuses and len(statuses) == 2
    assert any("KeyboardInterrupt" in json.dumps(p.get("error")) for p in report["probes"])


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_a_stray_non_daemon_thread_does_not_keep_the_process_alive(tmp_path: Path,
                                                                   executor: str) -> None:
    # processes: the factory's thread starts in the parent and in each worker; a worker
    # with one exits by itself after "done" (it was held 10 s, then killed by the parent)
    done = audit(tmp_path, "--executor", executor, STRAY_THREAD="1")  # timeout=300 above
    assert done.returncode in (0, 1), done.stderr
    assert len(json.loads(done.stdout)["probes"]) == 2
