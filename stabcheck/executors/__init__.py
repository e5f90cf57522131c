"""Executors decide *where* cohorts run; engines decide *how*.

* ``local`` — in the audit's own process (:mod:`stabcheck.executors.local`);
* ``processes`` — in spawned worker processes that the audit can kill and replace, one per
  visible GPU, or ``workers`` of them on CPU (:mod:`stabcheck.executors.process`);
  ``process`` is its older name;
* ``ray`` — each cohort a task on a Ray cluster (:mod:`stabcheck.executors.ray`);
* ``auto`` (the default) — ``processes`` when a probe can hang or poison its process and the
  audit must survive it: when ``probe.timeout_s`` is set, or on CUDA; ``local`` otherwise.

A new executor is one module (a class with ``name``, ``in_process`` and ``run``, see
:class:`~stabcheck.executors.base.Executor`) and one line in :data:`EXECUTORS`. Importing this
package imports nothing else (the contract and the shared cohort loop are in
:mod:`stabcheck.executors.base`): the CLI lists :data:`EXECUTOR_CHOICES` cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stabcheck.registry import Registry

if TYPE_CHECKING:
    import torch

    from stabcheck.executors.base import Executor

# Executors by name → where the class lives (imported when first used).
EXECUTORS = Registry("executor", {
    "local": "stabcheck.executors.local:LocalExecutor",
    "processes": "stabcheck.executors.process:ProcessExecutor",
    "process": "stabcheck.executors.process:SingleProcessExecutor",
    "ray": "stabcheck.executors.ray:RayExecutor",
})
EXECUTOR_CHOICES = ("auto", *EXECUTORS)


def get_executor(name: str, workers: int | None = None,
                 ray_address: str | None = None) -> Executor:
    """A new executor of the given registered name (``workers``, ``ray_address``: for the
    executors that take them)."""
    cls = EXECUTORS.load(name, EXECUTOR_CHOICES)
    if ray_address is not None and name != "ray":
        raise ValueError(f"--ray-address applies to the ray executor, not {name!r}")
    if ray_address is not None:
        executor: Executor = cls(address=ray_address)
    elif workers is None:
        executor = cls()
    elif name in _TAKES_WORKERS:
        executor = cls(workers=workers)
    else:
        raise ValueError(f"--workers applies to the {' or '.join(_TAKES_WORKERS)} executor, "
                         f"not {name!r}")
    return executor


_TAKES_WORKERS = ("processes", "process")


def choose_executor(name: str, timeout_s: float | None, device: torch.device,
                    workers: int | None = None, ray_address: str | None = None) -> Executor:
    """The executor called ``name``, with ``auto`` resolved as the module docstring says
    (and as ``processes`` when ``workers`` is given)."""
    if name == "auto" and ray_address is not None:
        name = "ray"
    if name == "auto":
        name = "processes" if (timeout_s is not None or device.type == "cuda"
                               or workers is not None) else "local"
    return get_executor(name, workers, ray_address)


__all__ = ["EXECUTORS", "EXECUTOR_CHOICES", "choose_executor", "get_executor"]
