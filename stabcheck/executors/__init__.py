"""Executors decide *where* cohorts run; engines decide *how*.

* ``local`` — in the audit's own process (:mod:`stabcheck.executors.local`);
* ``process`` — in a spawned worker process that the audit can kill and replace
  (:mod:`stabcheck.executors.process`);
* ``auto`` (the default) — ``process`` when a probe can hang or poison its process and the
  audit must survive it: when ``probe.timeout_s`` is set, or on CUDA; ``local`` otherwise.

A new executor is one module (a class with ``name``, ``in_process`` and ``run``, see
:class:`~stabcheck.executors.base.Executor`) and one line in :data:`EXECUTORS`. Importing this
package imports nothing else (the contract and the shared cohort loop are in
:mod:`stabcheck.executors.base`): the CLI lists :data:`EXECUTOR_CHOICES` cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stabcheck.lazy import load

if TYPE_CHECKING:
    import torch

    from stabcheck.executors.base import Executor

# Executors by name → where the class lives (imported when first used).
EXECUTORS: dict[str, str] = {
    "local": "stabcheck.executors.local:LocalExecutor",
    "process": "stabcheck.executors.process:ProcessExecutor",
}
EXECUTOR_CHOICES = ("auto", *EXECUTORS)


def get_executor(name: str) -> Executor:
    """A new executor of the given registered name."""
    try:
        ref = EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; expected one of "
                         f"{', '.join(EXECUTOR_CHOICES)}") from None
    executor: Executor = load(ref)()
    return executor


def choose_executor(name: str, timeout_s: float | None, device: torch.device) -> Executor:
    """The executor called ``name``, with ``auto`` resolved as the module docstring says."""
    if name == "auto":
        name = "process" if timeout_s is not None or device.type == "cuda" else "local"
    return get_executor(name)


__all__ = ["EXECUTORS", "EXECUTOR_CHOICES", "choose_executor", "get_executor"]
