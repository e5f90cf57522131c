"""Executors decide *where* cohorts run; engines decide *how*.

* ``local`` — in the audit's own process (:mod:`stabcheck.executors.local`);
* ``process`` — in a spawned worker process that the audit can kill and replace
  (:mod:`stabcheck.executors.process`);
* ``auto`` (the default) — ``process`` when a probe can hang or poison its process and the
  audit must survive it: when ``probe.timeout_s`` is set, or on CUDA; ``local`` otherwise.
"""

from __future__ import annotations

import torch

from stabcheck.executors.base import (
    DEFAULT_GRACE_S,
    Executor,
    Interrupts,
    Job,
    StopScheduling,
    run_cohorts,
)
from stabcheck.executors.local import LocalExecutor
from stabcheck.executors.process import ProcessExecutor

EXECUTORS = ("auto", "local", "process")


def choose_executor(name: str, timeout_s: float | None, device: torch.device) -> Executor:
    """The executor called ``name``, with ``auto`` resolved as the module docstring says."""
    if name == "auto":
        name = "process" if timeout_s is not None or device.type == "cuda" else "local"
    if name == "local":
        return LocalExecutor()
    if name == "process":
        return ProcessExecutor()
    raise ValueError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")


__all__ = ["DEFAULT_GRACE_S", "EXECUTORS", "Executor", "Interrupts", "Job", "LocalExecutor",
           "ProcessExecutor", "StopScheduling", "choose_executor", "run_cohorts"]
