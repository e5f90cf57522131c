"""The Ray executor: each cohort is one Ray task on an existing (or a local) Ray cluster.

``ray`` is imported only when this executor runs (``pip install 'stabcheck[ray]'``). The
audit connects with ``ray.init(address)``: ``None`` starts a local cluster in this process,
``auto`` joins the cluster started on this machine (``ray start --head``), and
``ray://host:port`` a remote one through Ray Client. Against a cluster (any address), the
config's directory is shipped to the workers as Ray's runtime environment
(``working_dir``), so ``./file.py`` user code is importable there; stabcheck itself and
torch must be installed on every worker node (see ``docs/scale-out.md``).

* Before submitting, the cluster's resources are checked: a CUDA audit needs GPUs in the
  cluster (each task asks for ``num_gpus=1``), and a CPU-only cluster fails at once with a
  clear message instead of pending forever.
* Ray's retries are off (``max_retries=0``): a worker that dies, or a task that fails, is
  the probes' ``error`` status in the report, never a silent re-run.
* Results reach the parent's journal as each cohort's task finishes (a task returns its
  probes' records together); ``--resume`` works across executors, the journal being the
  parent's.
* On Ctrl-C (or any way out) the outstanding tasks are cancelled (``force=True``, which kills
  their worker processes); the partial report is written by the audit as usual.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from stabcheck.config import LoadedConfig
from stabcheck.engine import EngineSettings, EngineSpec, RecordSink, StepSink
from stabcheck.errors import StabcheckError
from stabcheck.executors.base import Interrupts, Job, run_cohorts, warm_up
from stabcheck.plan import Cohort, ProbeSpec
from stabcheck.records import ProbeRecord

POLL_S = 0.1


class RayExecutor:
    """Runs each cohort as a Ray task and journals its records when it finishes."""

    name = "ray"
    in_process = False

    def __init__(self, address: str | None = None, max_retries: int = 0) -> None:
        self.address = address
        self.max_retries = max_retries

    def run(self, job: Job, cohorts: list[Cohort], on_record: RecordSink,
            on_steps: StepSink, control: Interrupts) -> None:
        """Submit every cohort, journal results as tasks finish, cancel the rest on a stop."""
        ray = _import_ray()
        if not ray.is_initialized():
            runtime_env = None
            if self.address is not None:
                runtime_env = {"working_dir": str(job.loaded.base_dir)}
            ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=False,
                     include_dashboard=False if self.address is None else None)
        gpu = job.problem.device.type == "cuda"
        check_resources(ray.cluster_resources(), gpu)
        task = ray.remote(_ray_cohort).options(num_cpus=1, num_gpus=1 if gpu else 0,
                                               max_retries=self.max_retries)
        spec = job.engine.spec
        pending: dict[Any, Cohort] = {}
        for cohort in cohorts:
            ref = task.remote(job.loaded, "cuda" if gpu else str(job.problem.device), spec,
                              job.settings, {p.index: job.keys[p.index] for p in cohort.probes},
                              cohort)
            pending[ref] = cohort
        try:
            while pending and not control.stop_requested:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    cohort = pending.pop(ref)
                    started = time.monotonic()
                    try:
                        records, notes, steps = ray.get(ref)
                    except Exception as exc:  # the task failed or its worker died
                        _lost(job, cohort, exc, time.monotonic() - started, on_record)
                        continue
                    for message in notes:
                        if job.on_note is not None:
                            job.on_note(message)
                    on_steps(steps)
                    for body in records:
                        on_record(ProbeRecord.from_dict(body))
        finally:
            for ref in pending:  # stop requested, Ctrl-C forced, or an error: cancel the rest
                ray.cancel(ref, force=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        error = StabcheckError("--executor ray needs Ray: pip install 'stabcheck[ray]'")
        error.exit_code = 2
        raise error from None
    return ray


def check_resources(resources: dict[str, float], gpu: bool) -> None:
    """Fail at once when the cluster cannot run a task (instead of it pending forever)."""
    if gpu and resources.get("GPU", 0) < 1:
        error = StabcheckError("the audit runs on CUDA but the Ray cluster has no GPU "
                               f"(resources: {_describe(resources)}); use probe.device: cpu "
                               "or add GPU workers to the cluster")
        error.exit_code = 3
        raise error
    if resources.get("CPU", 0) < 1:
        error = StabcheckError(f"the Ray cluster has no CPU to run a task on (resources: "
                               f"{_describe(resources)})")
        error.exit_code = 3
        raise error


def _describe(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU", "memory")}
    return ", ".join(f"{k}={v:g}" for k, v in sorted(shown.items())) or "none"


def _lost(job: Job, cohort: Cohort, exc: Exception, elapsed: float,
          on_record: RecordSink) -> None:
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    for spec in cohort.probes:
        on_record(_lost_record(job, spec, elapsed, f"Ray task failed: {message[:300]}",
                               type(exc).__name__))


def _lost_record(job: Job, spec: ProbeSpec, elapsed: float, message: str,
                 kind: str) -> ProbeRecord:
    return ProbeRecord.for_probe(spec, job.keys[spec.index], job.settings.steps,
                                 job.engine.name, outcome="error", wall_time_s=elapsed,
                                 error={"type": kind, "message": message, "where": None})


def _ray_cohort(loaded: LoadedConfig, device: str, spec: EngineSpec,
                settings: EngineSettings, keys: dict[int, str],
                cohort: Cohort) -> tuple[list[dict[str, Any]], list[str], int]:
    """One cohort, inside a Ray worker: the records (as dicts), the engine's notes, steps."""
    import torch

    from stabcheck.problem import build_problem

    if not loaded.path.exists():  # a remote node: the config's directory is working_dir
        loaded = dataclasses.replace(loaded, path=Path(os.getcwd()) / loaded.path.name)
    torch.set_num_threads(1)
    problem = build_problem(loaded, device=torch.device(device))
    data = problem.data.to(problem.device)
    engine = spec.build()
    warm_up()
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    steps = 0

    def count(n: int) -> None:
        nonlocal steps
        steps += n

    run_cohorts(engine, problem, [cohort], settings, keys, data,
                lambda rec: records.append(rec.to_dict()), count, lambda: False,
                on_note=notes.append)
    return records, notes, steps
