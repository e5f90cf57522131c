"""The allocator settings of stabcheck's own processes (``hygiene.keep_freed_memory``): a
training step's freed buffers stay with the process instead of being unmapped and faulted
in again on the next step. Counted in page faults (a counter, not a timing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STEPS = """
import resource, statistics, sys, torch
from stabcheck.executors.hygiene import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "tuned" else None
torch.set_num_threads(1)
x = torch.randn(1024, 256)
w = [torch.randn(256, 256, requires_grad=True) for _ in range(4)]
def step():
    h = x
    for wi in w:
        h = torch.tanh(h @ wi)
    h.sum().backward()
for _ in range(3):
    step()
windows = []  # the median of 8 windows: the kernel's own reclaim adds faults at random
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
print(took, statistics.median(windows))
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or
                           os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only")


def _faults_per_step(mode: str, **env: str) -> tuple[str, float]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env=environ, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    return out[0], float(out[1])


@glibc
def test_freed_step_buffers_are_kept_instead_of_faulted_in_again() -> None:
    took, tuned = _faults_per_step("tuned")
    _, default = _faults_per_step("default")
    assert took == "True"
    # Each 1 MB activation is a fresh mmap under glibc's defaults: hundreds of faults a step
    # (median window 190-700 here), a few dozen at most once freed blocks are kept (0-45).
    assert default > 50 and tuned < default / 2, (default, tuned)


@glibc
def test_turned_off_by_the_environment() -> None:
    took, faults = _faults_per_step("tuned", STABCHECK_MALLOC_TUNING="0")
    assert took == "False" and faults > 50
