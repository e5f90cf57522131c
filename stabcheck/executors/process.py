"""The process executor: cohorts run in worker processes, forked from a fork server that has
imported torch already (``spawn`` where there is none; :mod:`stabcheck.executors.worker`).

The worker rebuilds the problem from the config (user code is imported there the same way
as here: ``./file.py`` references are relative to the config file, ``sys.path`` is the
parent's), runs the cohorts with the named engine, and streams every finished probe back
through a pipe as a plain dict; the parent journals it at once. What a worker buys:

* **hangs inside a step** — the parent holds a hard deadline per probe
  (``probe.timeout_s`` plus a little slack, reset whenever a probe finishes). Past it the
  worker gets SIGKILL; the running probe is recorded as ``timeout`` and a
  fresh worker carries on with the rest of the cohort;
* **a dying worker** — SIGKILL, a segfault in an extension, the OOM killer: the running
  probe is recorded as ``error`` ("worker process died: signal N") and a fresh worker
  carries on;
* **a poisoned CUDA context** — after a probe fails on CUDA, the worker checks that the
  device still answers; after a device-side assert it does not, so the worker exits and the
  next probes run in a fresh process with a fresh context.

Workers ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process group; the parent decides), die
with their parent (``PR_SET_PDEATHSIG`` on Linux, plus a watchdog thread everywhere), and
are killed on every way out of :meth:`ProcessExecutor.run`.

Engines that run a cohort's probes together (``runs_cohort_together``) have all of the
cohort's unfinished probes in flight at once; a hang or a crash is then charged to all of
them. A sequential engine runs one at a time, so only that one is charged.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess
from typing import Any

from stabcheck.engine import EngineSpec, RecordSink, StepSink
from stabcheck.errors import StabcheckError
from stabcheck.executors.base import Interrupts, Job
from stabcheck.executors.worker import EXIT_POISONED, Payload, worker_context, worker_main
from stabcheck.plan import Cohort, ProbeSpec
from stabcheck.records import ProbeRecord

KILL_GRACE_S = 2.0  # how long lanes get to kill their workers on the way out
POLL_S = 0.05


def hard_limit(timeout_s: float | None) -> float | None:
    """The parent's per-probe deadline: ``timeout_s`` plus slack for the engine's own check
    (which stops a probe between steps and keeps its trace) to act first."""
    if timeout_s is None:
        return None
    return timeout_s + max(1.0, 0.1 * timeout_s)


class ProcessExecutor:
    """Runs cohorts in spawned worker processes (one lane per worker, lanes in parallel),
    restarting a lane's worker after a hang or a crash."""

    name = "processes"
    in_process = False  # probes never touch this process's device memory

    def __init__(self, kill_grace_s: float = KILL_GRACE_S, workers: int | None = None) -> None:
        self.kill_grace_s = kill_grace_s
        self.workers = workers  # None: one per visible GPU on CUDA, one on CPU
        self.workers_started = 0
        self.startup_s: list[float] = []  # spawn to ready, per worker (for benchmarks)
        self._abort = threading.Event()  # set when the parent leaves: lanes kill and return

    def prepare(self) -> None:
        """Start the workers' fork server now (it imports torch while the audit does its
        init checks); the resource tracker first, both with SIGINT and SIGTERM blocked so
        that the workers forked from the server start with them blocked too."""
        _start_resource_tracker()
        start_fork_server()

    def run(self, job: Job, cohorts: list[Cohort], on_record: RecordSink,
            on_steps: StepSink, control: Interrupts) -> None:
        """Run ``cohorts`` in workers until done or until ``control`` asks to stop."""
        import torch

        lanes = plan_lanes(cohorts, job.problem.device, self.workers,
                           torch.cuda.device_count() if job.problem.device.type == "cuda" else 0)
        threads = max(1, torch.get_num_threads() // max(1, len(lanes)))
        self._abort.clear()
        self.prepare()  # from this (the main) thread, not from a lane's (see preload.py)
        if len(lanes) <= 1:  # one worker: everything on this (the main) thread, as before
            for device, todo in lanes:
                self._lane(job, todo, device, threads, on_record, on_steps, control)
            return
        lock = threading.Lock()

        def record(rec: ProbeRecord) -> None:
            with lock:
                on_record(rec)

        def steps(n: int) -> None:
            with lock:
                on_steps(n)

        errors: list[BaseException] = []

        def lane(device: str, todo: list[Cohort]) -> None:
            if hasattr(signal, "pthread_sigmask"):  # signals go to the main thread only
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                self._lane(job, todo, device, threads, record, steps, control)
            except BaseException as exc:  # re-raised in the main thread
                errors.append(exc)
                self._abort.set()

        workers = [threading.Thread(target=lane, args=(device, todo), daemon=True,
                                    name=f"stabcheck-lane-{i}")
                   for i, (device, todo) in enumerate(lanes)]
        for thread in workers:
            thread.start()
        try:
            while any(t.is_alive() for t in workers):
                for thread in workers:
                    thread.join(POLL_S)
        finally:
            self._abort.set()  # on KeyboardInterrupt: every lane kills its worker and returns
            for thread in workers:
                thread.join(self.kill_grace_s + 15)
        for exc in errors:
            if isinstance(exc, KeyboardInterrupt):
                raise exc
        if errors:
            raise errors[0]

    def _lane(self, job: Job, cohorts: list[Cohort], device: str, threads: int,
              on_record: RecordSink, on_steps: StepSink, control: Interrupts) -> None:
        """Run ``cohorts`` in one worker after another on ``device`` until done."""
        concurrent = job.engine.runs_cohort_together
        ctx = worker_context()
        finished: set[int] = set()

        def record(rec: ProbeRecord) -> None:
            on_record(rec)
            finished.add(rec.index)

        while not control.stop_requested and not self._abort.is_set():
            todo = [Cohort(c.batch_size, tuple(p for p in c.probes if p.index not in finished))
                    for c in cohorts]
            todo = [c for c in todo if c.probes]
            if not todo:
                return
            before = len(finished)
            done = self._one_worker(ctx, job, job.engine.spec, todo, concurrent, record,
                                    on_steps, control, device, threads)
            if done or len(finished) == before:
                return  # the worker finished its list (or stopped) / made no progress

    def _one_worker(self, ctx: Any, job: Job, engine: EngineSpec, todo: list[Cohort],
                    concurrent: bool, on_record: RecordSink, on_steps: StepSink,
                    control: Interrupts, device: str, threads: int) -> bool:
        """Run ``todo`` in one worker. True when it finished (or stopped on request); False
        when it was lost (hang, crash, poisoned context) and another must take over."""
        payload = Payload(loaded=job.loaded, device=device, engine=engine,
                           settings=job.settings, keys=job.keys, cohorts=todo,
                           num_threads=threads, parent_pid=os.getpid(),
                           environ=dict(os.environ), cwd=os.getcwd())
        results_r, results_w = ctx.Pipe(duplex=False)
        control_r, control_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker_main, args=(payload, results_w, control_r),
                           name="stabcheck-worker", daemon=True)
        limit = hard_limit(job.settings.timeout_s)
        # Building the problem took job.setup_s here; allow the worker generously more
        # (it also imports torch) before calling its start-up a hang.
        deadline: float | None = time.monotonic() + 120.0 + 3.0 * job.setup_s
        current: Cohort | None = None
        done_in_current: set[int] = set()
        probe_started = time.monotonic()
        steps = 0
        stop_sent = False
        crash: dict[str, Any] | None = None

        def in_flight() -> list[ProbeSpec]:
            left = [p for p in current.probes if p.index not in done_in_current] \
                if current is not None else []
            return left if concurrent else left[:1]

        spawned = time.monotonic()
        try:
            with _signals_blocked():  # no Ctrl-C or SIGTERM before the worker ignores them
                proc.start()
            self.workers_started += 1
            results_w.close()  # ours closed: the pipe reports EOF once the worker is gone
            control_r.close()
            while True:
                if self._abort.is_set():
                    return True  # the parent is leaving (Ctrl-C, another lane failed)
                if control.stop_requested and not stop_sent:
                    with contextlib.suppress(OSError):
                        control_w.send("stop")
                    stop_sent = True
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    self._kill(proc)
                    if current is None:
                        raise StabcheckError("the worker process did not finish starting up "
                                             "in time (building the model and data hung?)")
                    for spec in in_flight():
                        on_record(_lost_record(job, spec, "timeout", now - probe_started,
                                               f"probe ran past probe.timeout_s="
                                               f"{job.settings.timeout_s:g}s inside a training "
                                               f"step ({steps} steps reported before it); its "
                                               "worker process was stopped"))
                    return False
                try:
                    if not results_r.poll(POLL_S):
                        continue
                    kind, body = results_r.recv()
                except (EOFError, OSError):
                    proc.join(10)
                    code = proc.exitcode
                    if code == EXIT_POISONED:
                        return False
                    if current is None:
                        raise StabcheckError("the worker process died while starting up: "
                                             f"{_describe_exit(code)}") from None
                    for spec in in_flight():
                        elapsed = time.monotonic() - probe_started
                        if crash is not None:
                            lost = _lost_record(job, spec, "error", elapsed,
                                                f"{crash['message']} (the worker process could "
                                                "not go on)", kind=crash["type"])
                            lost.error = {**(lost.error or {}), "where": crash["where"]}
                        else:
                            lost = _lost_record(job, spec, "error", elapsed,
                                                f"worker process died: {_describe_exit(code)} "
                                                f"({steps} steps reported before it)",
                                                kind="WorkerDied")
                        on_record(lost)
                    return False
                if kind == "ready":
                    deadline = None
                    self.startup_s.append(time.monotonic() - spawned)
                elif kind == "start":
                    current, done_in_current, steps = todo[body], set(), 0
                    job.on_cohort(current)
                    probe_started = time.monotonic()
                    deadline = probe_started + limit if limit is not None else None
                elif kind == "steps":
                    steps += body
                    on_steps(body)
                elif kind == "note":
                    # The engine starts over on part of the cohort (a sequential re-run after a
                    # vectorized failure, or halves after an OOM): a fresh time limit for it.
                    probe_started, steps = time.monotonic(), 0
                    deadline = probe_started + limit if limit is not None else None
                    if job.on_note is not None:
                        job.on_note(body)
                elif kind == "record":
                    rec = ProbeRecord.from_dict(body)
                    on_record(rec)
                    done_in_current.add(rec.index)
                    probe_started, steps = time.monotonic(), 0
                    deadline = probe_started + limit if limit is not None else None
                elif kind == "crash":
                    crash = body
                elif kind == "fatal":
                    error = StabcheckError(body["message"])
                    error.exit_code = body["exit_code"]
                    raise error
                elif kind == "done":
                    proc.join(10)
                    return True
        finally:
            if proc.is_alive():
                self._kill(proc)
            for conn in (results_r, results_w, control_r, control_w):
                conn.close()

    def _kill(self, proc: BaseProcess) -> None:
        # Workers ignore SIGTERM (a SIGTERM to the whole group is the parent's to handle), so
        # a worker is stopped with SIGKILL; it holds nothing that a SIGTERM would have saved.
        proc.kill()
        proc.join(10)


def plan_lanes(cohorts: list[Cohort], device: Any, workers: int | None,
               gpus: int) -> list[tuple[str, list[Cohort]]]:
    """Cohorts spread over workers: ``(device, cohorts)`` per worker, largest cohort first
    into the lane with the fewest probes. On CUDA without an index, one worker per visible
    GPU (``CUDA_VISIBLE_DEVICES`` is what torch counts) unless ``workers`` says otherwise,
    worker ``i`` pinned to ``cuda:(i mod gpus)``; elsewhere ``workers`` (default 1) workers on
    the audit's device."""
    spread = device.type == "cuda" and device.index is None and gpus > 0
    count = workers if workers is not None else (gpus if spread else 1)
    count = max(1, min(count, len(cohorts))) if cohorts else 1
    devices = [f"cuda:{i % gpus}" if spread else str(device) for i in range(count)]
    lanes: list[list[Cohort]] = [[] for _ in range(count)]
    load = [0] * count
    for cohort in sorted(cohorts, key=lambda c: -len(c.probes)):
        i = load.index(min(load))
        lanes[i].append(cohort)
        load[i] += len(cohort.probes)
    return [(d, lane) for d, lane in zip(devices, lanes, strict=True) if lane]


class SingleProcessExecutor(ProcessExecutor):
    """``process``: the older name of ``processes`` (same behaviour, same options)."""

    name = "process"


def _lost_record(job: Job, spec: ProbeSpec, outcome: str, elapsed: float, message: str,
                 kind: str = "Timeout") -> ProbeRecord:
    """The record of a probe whose worker was lost: no trace survives, only what happened."""
    return ProbeRecord.for_probe(spec, job.keys[spec.index], job.settings.steps, job.engine.name,
                                 outcome=outcome, wall_time_s=elapsed,
                                 error={"type": kind, "message": message, "where": None})


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        name = next((s.name for s in signal.Signals if s == -code), "unknown")
        return f"signal {-code} ({name})"
    return f"exit status {code}"


def start_fork_server() -> None:
    """Start the fork server of :func:`worker_context` if workers come from one (a no-op
    otherwise, or when it runs already)."""
    ctx = worker_context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _signals_blocked():
            forkserver.ensure_running()


def _start_resource_tracker() -> None:
    """Started by the first ``Process.start()``, the tracker *unblocks* SIGINT and SIGTERM
    after it (``ensure_running``), and that worker would start unprotected: start it first."""
    if hasattr(signal, "pthread_sigmask"):  # POSIX: the tracker exists there
        resource_tracker.ensure_running()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked while a worker is spawned (it inherits the mask through
    ``exec`` and unblocks them once it ignores them); the resource tracker already runs."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
