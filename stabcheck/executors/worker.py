"""The worker process side of the process executor (:mod:`stabcheck.executors.process`).

A worker is started from a fork server that has already imported torch and stabcheck's engine
modules (:func:`worker_context`; ``spawn`` where there is no fork server), rebuilds the
problem from the config, runs its cohorts with the named engine, and streams every event back
through a pipe as a plain tuple: ``ready``, ``start`` (a cohort), ``steps``, ``note``,
``record``, ``crash``, ``fatal``, ``done``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from stabcheck.config import LoadedConfig
from stabcheck.engine import EngineSettings, EngineSpec
from stabcheck.engine.failures import describe_exception
from stabcheck.errors import StabcheckError
from stabcheck.executors.base import run_cohorts, warm_up
from stabcheck.executors.hygiene import keep_freed_memory, killed_with_parent, lingering_threads
from stabcheck.plan import Cohort
from stabcheck.records import ProbeRecord

EXIT_POISONED = 75  # a worker's exit status: "my CUDA context is unusable, start another"
EXIT_CRASHED = 76  # a worker's exit status: an exception escaped the engine

PRELOAD = ["stabcheck.executors.preload"]  # what the fork server imports once (see there)


def worker_context() -> Any:
    """The multiprocessing context workers start from: a fork server preloaded with
    :data:`PRELOAD` on Linux; ``spawn`` elsewhere (or with ``STABCHECK_WORKER_START=spawn``)."""
    method = os.environ.get("STABCHECK_WORKER_START", "forkserver")
    if method != "spawn" and sys.platform.startswith("linux") \
            and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


@dataclass
class Payload:
    """What a worker is told: picklable, no closures."""

    loaded: LoadedConfig
    device: str
    engine: EngineSpec  # exactly the engine the parent chose, options included
    settings: EngineSettings
    keys: dict[int, str]
    cohorts: list[Cohort]
    num_threads: int
    parent_pid: int
    # The audit's environment and working directory now: a worker forked from the fork
    # server would otherwise have the server's, from whenever it started.
    environ: dict[str, str] | None = None
    cwd: str | None = None




def _die_with_parent(parent_pid: int) -> None:
    """Never outlive the audit: the kernel kills us if our parent dies (Linux), and a watchdog
    thread exits when our parent changes or the audit is gone (everywhere else, and as a
    second line). A worker forked from the fork server has the server as its parent, which
    itself exits when the audit does."""
    killed_with_parent()
    parent = os.getppid()
    if not _alive(parent_pid) or (parent != parent_pid and not _alive(parent)):
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or not _alive(parent_pid):
                os._exit(1)

    threading.Thread(target=watch, name="stabcheck-parent-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def _cuda_unusable() -> bool:
    import torch

    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
    except Exception:
        return True
    return False


def worker_main(payload: Payload, results: Connection, control: Connection) -> None:
    """Entry point of a worker process (module-level, so ``spawn`` can import it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a group-wide SIGTERM: the parent decides
    if hasattr(signal, "pthread_sigmask"):
        # A worker started from a lane thread inherits its mask: SIGTERM must reach us.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(payload.parent_pid)
    keep_freed_memory()  # a spawned worker (a forked one has it from the fork server)
    if payload.environ is not None:
        os.environ.clear()
        os.environ.update(payload.environ)
    if payload.cwd is not None:
        with contextlib.suppress(OSError):
            os.chdir(payload.cwd)

    from stabcheck import nodynamo

    nodynamo.install()  # as in the audit's own process: eager torch.optim without dynamo

    import torch

    from stabcheck.problem import build_problem

    torch.set_num_threads(payload.num_threads)
    try:
        problem = build_problem(payload.loaded, device=torch.device(payload.device))
        data = problem.data.to(problem.device)
        engine = payload.engine.build()
        warm_up()
    except BaseException as exc:  # user code's KeyboardInterrupt, sys.exit(): no traceback
        code = exc.exit_code if isinstance(exc, StabcheckError) else 3
        results.send(("fatal", {"message": f"in the worker process: {exc}", "exit_code": code}))
        return
    results.send(("ready", None))
    stopping = False

    def stop_requested() -> bool:
        nonlocal stopping
        if not stopping:
            with contextlib.suppress(OSError, EOFError):
                stopping = control.poll()
        return stopping

    def on_record(record: ProbeRecord) -> None:
        results.send(("record", record.to_dict()))
        if record.outcome in ("error", "oom") and problem.device.type == "cuda" \
                and _cuda_unusable():
            results.close()
            os._exit(EXIT_POISONED)

    try:
        run_cohorts(engine, problem, payload.cohorts, payload.settings, payload.keys, data,
                    on_record, lambda n: results.send(("steps", n)), stop_requested,
                    on_cohort=lambda i: results.send(("start", i)),
                    on_note=lambda message: results.send(("note", message)))
    except BaseException as exc:  # escaped the engine (a poisoned device, a bug, user code's
        # KeyboardInterrupt or sys.exit()): say what, without a traceback
        results.send(("crash", describe_exception(exc)))
        results.close()
        os._exit(EXIT_CRASHED)
    results.send(("done", None))
    if lingering_threads():  # a non-daemon thread of user code would hold the worker at exit
        results.close()
        os._exit(0)
