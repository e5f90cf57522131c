"""probe.timeout_s bounds the user code the audit runs in its own process outside the probes:
the trial forward pass and the per-seed init checks (issue 17 item 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, deep_update

HANGS = '''
import os, time
from torch import nn

class Hangs(nn.Linear):
    calls = 0
    def forward(self, x):
        Hangs.calls += 1
        if Hangs.calls == int(os.environ["HANG_AT_CALL"]):
            time.sleep(3600)
        return super().forward(x)

def build():
    return Hangs(4, 3)
'''


@pytest.mark.parametrize(("call", "what"), [(1, "the trial forward pass"),
                                            (2, "the init checks of seed 0")])
def test_a_hanging_forward_outside_the_probes_is_stopped_by_probe_timeout(
        tmp_path: Path, call: int, what: str) -> None:
    (tmp_path / "hangs.py").write_text(textwrap.dedent(HANGS), encoding="utf-8")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": [0.01], "seeds": [0],
                                       "batch_sizes": [16]},
                             "probe": {"steps": 4, "timeout_s": 2}})
    cfg["model"] = {"factory": "./hangs.py:build", "kwargs": {}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "stabcheck", "audit", str(path), "--out",
                           str(tmp_path / "r"), "--format", "json"],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "NO_COLOR": "1", "HANG_AT_CALL": str(call)})
    assert done.returncode == 3, done.stderr
    assert f"{what} ran past probe.timeout_s=2s" in done.stderr
    assert "Traceback" not in done.stderr
