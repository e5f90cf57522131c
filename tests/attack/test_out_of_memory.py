"""A CPU out-of-memory is an ``oom`` probe, as a CUDA one is (issue 17 item 14).

torch's CPU allocator raises a plain ``RuntimeError("... DefaultCPUAllocator: can't allocate
memory ...")``, not "out of memory": it was recorded as ``error``, and the vectorized engine
re-ran such a cohort sequentially instead of halving it. The last test allocates for real
under ``RLIMIT_AS`` in a subprocess: it ends with ``oom`` probes, never a hang or traceback.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stabcheck.config import load_config
from stabcheck.engine.failures import is_oom
from stabcheck.engine.vectorized import VectorizedEngine
from stabcheck.problem import build_problem
from tests.attack.helpers import report, run
from tests.conftest import TINY, deep_update
from tests.engine.test_vectorized import _run

CPU_OOM_MESSAGE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                   "can't allocate memory: you tried to allocate 40000000000 bytes. "
                   "Error code 12 (Cannot allocate memory)")

HUNGRY = f'''
import torch
from torch import nn
from torch._C import _functorch as F

def members(t):
    """How many probes are stacked in this (vmap-ed) parameter: 1 outside vmap."""
    physical = t
    while F.is_batchedtensor(physical) or F.is_gradtrackingtensor(physical):
        physical = F.get_unwrapped(physical)
    return physical.numel() // t.numel()

class Hungry(nn.Linear):
    """Runs out of CPU memory above a batch size, or above a number of stacked members."""
    def __init__(self, max_batch=10**9, max_members=10**9, python=False):
        super().__init__(4, 3)
        self.max_batch, self.max_members, self.python = max_batch, max_members, python
    def forward(self, x):
        if x.shape[0] > self.max_batch or members(self.weight) > self.max_members:
            if self.python:
                raise MemoryError()
            raise RuntimeError({CPU_OOM_MESSAGE!r})
        return super().forward(x)
'''


def test_torch_cpu_allocator_failure_is_an_oom() -> None:
    import torch

    try:
        torch.empty(2**62, dtype=torch.uint8)  # the real message, whatever this torch says
    except RuntimeError as exc:
        assert is_oom(exc), str(exc)
    assert is_oom(RuntimeError(CPU_OOM_MESSAGE)) and is_oom(MemoryError())
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def _hungry(write_config, write_module, sweep: dict[str, Any], **kwargs: Any) -> Path:
    write_module("hungry.py", HUNGRY)
    return write_config({"model": {"builtin": None, "factory": "./hungry.py:Hungry",
                                   "kwargs": kwargs},
                         "sweep": {"learning_rates": [0.01, 0.1], **sweep},
                         "probe": {"steps": 6, "flush_every": 3}})


@pytest.mark.parametrize("python", [False, True], ids=["torch-allocator", "MemoryError"])
def test_a_cpu_oom_in_a_probe_is_status_oom_grouped_by_batch_size(
        write_config, write_module, tmp_path: Path, python: bool) -> None:
    path = _hungry(write_config, write_module, {"seeds": [0], "batch_sizes": [8, 32]},
                   max_batch=16, python=python)
    out = tmp_path / "r"
    result = run("audit", path, "--out", out, "--engine", "sequential", "--executor", "local")
    assert result.exit_code == 1, result.output
    status = {(p["batch_size"], p["lr"]): p["status"] for p in report(out)["probes"]}
    assert status == {(8, 0.01): "healthy", (8, 0.1): "healthy",
                      (32, 0.01): "oom", (32, 0.1): "oom"}
    assert report(out)["summary"]["oom_batch_sizes"] == [32]
    assert "Traceback" not in result.output


def test_a_cpu_oom_of_a_stacked_cohort_halves_it_instead_of_a_sequential_rerun(
        write_config, write_module) -> None:
    # 4 probes in one cohort: too many stacked, but two fit
    path = _hungry(write_config, write_module, {"seeds": [0, 1], "batch_sizes": [8]},
                   max_members=2)
    loaded = load_config(path)
    notes: list[str] = []
    records = _run(VectorizedEngine(), build_problem(loaded), loaded.config,
                   on_note=notes.append)
    assert len(records) == 4
    assert any("ran out of memory stacked together; running them in two halves" in n
               for n in notes), notes
    assert not any("re-run with the sequential engine" in n for n in notes), notes
    # the halves (2 members each) fit: every probe trained stacked, none fell back
    assert {r.engine for r in records.values()} == {"vectorized"}
    assert {r.outcome for r in records.values()} == {"completed"}


ALLOCATES = '''
import torch
from torch import nn

class Allocates(nn.Linear):
    """At one learning rate's probes, allocates 256 MiB blocks until memory runs out."""
    def __init__(self):
        super().__init__(4, 3)
    def forward(self, x):
        if getattr(self, "hog", False):
            hoard = []
            while True:
                hoard.append(torch.ones(2**26))  # 256 MiB, touched
        return super().forward(x)

class HogSGD(torch.optim.SGD):
    def __init__(self, params, lr, hog_lr=0.1):
        super().__init__(params, lr=lr)
        if abs(lr - hog_lr) < 1e-12:
            for module in ALL:
                module.hog = True

ALL = []

def build():
    ALL.clear()
    model = Allocates()
    ALL.append(model)
    return model
'''


ADDRESS_SPACE = 5 * 2**29  # 2.5 GiB: room for Python and torch, not for 256 MiB blocks forever


def _limit_address_space(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "processes"])
def test_a_real_allocation_under_rlimit_as_ends_in_oom_not_a_hang(tmp_path: Path,
                                                                  executor: str) -> None:
    (tmp_path / "allocates.py").write_text(ALLOCATES, encoding="utf-8")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": [0.01, 0.1], "seeds": [0],
                                       "batch_sizes": [16]},
                             "probe": {"steps": 4, "flush_every": 2}})
    cfg["model"] = {"factory": "./allocates.py:build", "kwargs": {}}
    cfg["optimizer"] = {"name": "./allocates.py:HogSGD", "kwargs": {}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    out = tmp_path / "r"
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "stabcheck", "audit", str(path), "--out", str(out),
         "--engine", "sequential", "--executor", executor, "--format", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
        preexec_fn=lambda: _limit_address_space(ADDRESS_SPACE))
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 1, done.stderr[-3000:]
    status = {p["lr"]: p["status"] for p in json.loads(done.stdout)["probes"]}
    assert status == {0.01: "healthy", 0.1: "oom"}, done.stderr[-3000:]
    assert report(out)["summary"]["oom_batch_sizes"] == [16]

