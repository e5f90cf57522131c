"""Executors decide *where* cohorts run; engines decide *how*.

* ``local`` — in the audit's own process (:mod:`stabcheck.executors.local`);
* ``processes`` — in spawned worker processes that the audit can kill and replace, one per
  visible GPU, or ``workers`` of them on CPU (:mod:`stabcheck.executors.process`);
  ``process`` is its older name;
* ``ray`` — each cohort a task on a Ray cluster (:mod:`stabcheck.executors.ray`);
* ``auto`` (the default) — ``processes`` when a probe can hang or poison its process and the
  audit must survive it: when ``probe.timeout_s`` is set, or on CUDA; on a CPU with two or
  more cores that other work already keeps busy (load average at least the core count),
  ``processes`` with one worker per core (at most one per cohort) when there are at least two
  independent cohorts (batch sizes) and at least :data:`PARALLEL_MIN_PROBE_STEPS` probe-steps
  to run, enough to repay the workers' start-up (see ``docs/performance.md``, "Executors",
  for the measurements); ``local`` otherwise.

A new executor is one module (a class with ``name``, ``in_process`` and ``run``, see
:class:`~stabcheck.executors.base.Executor`) and one line in :data:`EXECUTORS`. Importing this
package imports nothing else (the contract and the shared cohort loop are in
:mod:`stabcheck.executors.base`): the CLI lists :data:`EXECUTOR_CHOICES` cheaply.
"""

from __future__ import annotations

import os
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

# Below this many probe-steps (probes x steps) still to run, ``auto`` keeps a CPU audit in
# its own process even with several cohorts: the workers' start-up (the fork server's
# ``import torch``, competing with the init checks for the cores) is not repaid. Measured on
# 2 cores (docs/performance.md, "Executors"): the quickstart sample (4,800 probe-steps) ran
# 8.0/6.1 s in-process against 10.0/8.8 s in two workers; at 500 steps (12,000) 18.4/17.7 s
# against 11.7/9.8 s.
PARALLEL_MIN_PROBE_STEPS = 10_000


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return 0.0


def parallel_workers(device: torch.device, cohorts: int, probe_steps: int,
                     cores: int | None = None, load: float | None = None) -> int | None:
    """How many CPU workers ``auto`` runs independent cohorts on; None: stay in-process.

    Only on a CPU already busy with other work (``load``, the 1-minute load average before
    the audit starts, at least the number of cores): there one process with all of torch's
    intra-op threads stalls on every parallel region whose slower thread has no core, and
    single-threaded workers ran the 12,000 probe-step grid 1.6-1.8x faster; on an idle
    machine they were no faster (docs/performance.md, "Executors").
    """
    cores = (os.cpu_count() or 1) if cores is None else cores
    if device.type != "cpu" or cores < 2 or cohorts < 2 or probe_steps < PARALLEL_MIN_PROBE_STEPS:
        return None
    if (_load_average() if load is None else load) < cores:
        return None
    return min(cores, cohorts)


def choose_executor(name: str, timeout_s: float | None, device: torch.device,
                    workers: int | None = None, ray_address: str | None = None,
                    cohorts: int = 1, probe_steps: int = 0) -> Executor:
    """The executor called ``name``, with ``auto`` resolved as the module docstring says
    (and as ``processes`` when ``workers`` is given). ``cohorts`` and ``probe_steps``: the
    independent cohorts and the probe-steps still to run. A process executor starts its
    workers' fork server at once, so that its ``import torch`` overlaps the audit's own work
    before the probes (the init checks)."""
    if name == "auto" and ray_address is not None:
        name = "ray"
    if name == "auto":
        spread = parallel_workers(device, cohorts, probe_steps) \
            if timeout_s is None and workers is None else None
        if spread is not None:
            name, workers = "processes", spread
        else:
            name = "processes" if (timeout_s is not None or device.type == "cuda"
                                   or workers is not None) else "local"
    executor = get_executor(name, workers, ray_address)
    prepare = getattr(executor, "prepare", None)
    if prepare is not None:
        prepare()
    return executor


__all__ = ["EXECUTORS", "EXECUTOR_CHOICES", "PARALLEL_MIN_PROBE_STEPS", "choose_executor",
           "get_executor", "parallel_workers"]
