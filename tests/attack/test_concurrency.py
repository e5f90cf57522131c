"""Two audits on one results directory: the second is refused (an exclusive lock), never two
writers interleaving lines in one journal; a resume while the first still runs likewise."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stabcheck.journal import LOCK_NAME, lock_directory
from tests.attack.helpers import TWO_PROBES, journal_lines, one_line_error, run
from tests.conftest import deep_update


def test_a_second_audit_on_a_locked_directory_is_refused(write_config, tmp_path: Path) -> None:
    config, out = write_config(TWO_PROBES), tmp_path / "r"
    assert run("audit", config, "--out", out).exit_code == 0
    with lock_directory(out):  # as a running audit holds it
        for extra in (["--overwrite"], ["--resume", out]):
            result = run("audit", config, "--out", out, *extra)
            assert result.exit_code == 2, result.output
            assert "another stabcheck audit is using this results directory" in \
                one_line_error(result)
            assert f"pid {os.getpid()}" in result.stderr
    assert sum(1 for e in journal_lines(out) if e["type"] == "probe") == 2  # untouched
    assert run("audit", config, "--out", out, "--overwrite").exit_code == 0  # lock released
    assert (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_real_processes_on_one_out(write_config, write_module, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.write_text("")
    write_module("slow.py", f"""
        import os
        import time
        from torch import nn
        class Held(nn.Linear):
            def forward(self, x):
                while os.path.exists({str(hold)!r}):  # until the test lets it go on
                    time.sleep(0.02)
                return super().forward(x)
        def build():
            return Held(4, 3)
    """)
    config = write_config(deep_update(TWO_PROBES, {
        "model": {"builtin": None, "factory": "./slow.py:build", "kwargs": {}},
        "probe": {"steps": 6}}))
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    first = subprocess.Popen([sys.executable, "-m", "stabcheck", "audit", str(config), "--out",
                              str(out), "--executor", "local", "--engine", "sequential"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "probes.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first audit ended before the second started"
        for extra in ([], ["--overwrite"], ["--resume", str(out)]):
            second = subprocess.run([sys.executable, "-m", "stabcheck", "audit", str(config),
                                     "--out", str(out), *extra], env=env, capture_output=True,
                                    text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert "another stabcheck audit is using this results directory" in second.stderr
        assert first.poll() is None  # still held: every refusal above met a live audit
        hold.unlink()
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    lines = journal_lines(out)
    assert [e["type"] for e in lines].count("header") == 1
    assert sum(1 for e in lines if e["type"] == "probe") == 2
