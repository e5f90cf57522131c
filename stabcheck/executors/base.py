"""What every executor shares: the job description, Ctrl-C handling, and the cohort loop.

An executor decides *where* cohorts run (in this process, in a worker process); the engine
decides *how* one cohort runs. Executors never look inside an engine: they hand it a cohort
and receive one :class:`ProbeRecord` per probe through ``on_record`` and step counts through
``on_steps``.

Ctrl-C and SIGTERM (:class:`Interrupts`):

* the first SIGINT stops scheduling: no new cohort starts, and the probes already running
  get ``grace_s`` seconds to finish and be journaled;
* a second SIGINT, or the end of the grace period, forces the stop: ``KeyboardInterrupt`` is
  raised in the main thread (workers are killed on the way out). Journal writes run in a
  :meth:`Interrupts.critical` section, so a forced stop never cuts a journal line in half.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from stabcheck.config import LoadedConfig
from stabcheck.engine import Engine, EngineSettings, Events, NoteSink, RecordSink, StepSink
from stabcheck.plan import Cohort
from stabcheck.records import ProbeRecord

if TYPE_CHECKING:
    from stabcheck.problem import Problem, TensorData

DEFAULT_GRACE_S = 5.0


class StopScheduling(BaseException):
    """Raised from an engine callback to leave a cohort once its running probes are done.

    A ``BaseException`` so that the engines' ``except Exception`` (which turns user-code
    errors into probe records) lets it through.
    """


@dataclass
class Job:
    """Everything an executor needs to run the remaining probes of an audit."""

    loaded: LoadedConfig
    problem: Problem
    data: TensorData  # on the problem's device
    # The engine the audit chose; an executor running elsewhere sends its ``spec`` (name and
    # options, picklable) so that the worker builds exactly this engine.
    engine: Engine
    settings: EngineSettings
    keys: dict[int, str]
    setup_s: float = 0.0  # how long building the problem took in this process
    on_note: NoteSink | None = None  # one-line notes from the engine, wherever it runs
    on_cohort: Callable[[Cohort], None] = lambda cohort: None  # a cohort (or its rest) starts


class Executor(Protocol):
    """Runs cohorts somewhere and reports each finished probe at once."""

    name: str
    # True: probes run in this process (its device memory, its crashes); the audit frees
    # its own copy of the data before the probes only when this is False.
    in_process: bool

    def run(self, job: Job, cohorts: list[Cohort], on_record: RecordSink,
            on_steps: StepSink, control: Interrupts) -> None:
        """Run ``cohorts`` until done or until ``control`` asks to stop."""


class Interrupts:
    """SIGINT handling for one audit (see the module docstring)."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.grace_s = grace_s
        self.stop_requested = False
        # What a first Ctrl-C waits for, in words (the audit keeps it current).
        self.waiting_for = "the running probe"
        self.forced = False
        self._critical = 0
        self._pending = False
        self._timer: threading.Timer | None = None
        self._previous: object = None
        self._installed = False
        self._settled = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupts]:
        """Install the handler for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals only reach the main thread; leave the default behaviour
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)
        # SIGTERM (a CI runner cancelling the job, `kill`, a container stop) is a Ctrl-C too:
        # the same grace period, the same partial report, the same exit status 130.
        previous_term = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        try:
            yield self
        finally:
            self._installed = False
            self.settle()
            signal.signal(signal.SIGINT, self._previous)
            signal.signal(signal.SIGTERM, previous_term)

    def settle(self) -> None:
        """The probes are over: cancel the grace timer and let further Ctrl-Cs pass without
        raising, so that the (partial) report is always written."""
        self._settled = True
        if self._timer is not None:
            self._timer.cancel()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.forced or self._settled:
            return  # already stopping as fast as it can; let the partial report be written
        if not self.stop_requested:
            self.stop_requested = True
            _say(f"\nstabcheck: stopping: waiting up to {self.grace_s:g}s for {self.waiting_for} "
                 "to finish, then writing a partial report; Ctrl-C again to abort now.")
            self._timer = threading.Timer(self.grace_s, self._grace_over)
            self._timer.daemon = True
            self._timer.start()
            return
        self.force()

    def _grace_over(self) -> None:
        if self._installed and not self.forced:
            # A real signal to the main thread (not _thread.interrupt_main), so that a main
            # thread blocked in a system call wakes up and runs _handle.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def force(self) -> None:
        """Stop now: raise KeyboardInterrupt (after the current journal write, if any)."""
        self.stop_requested = True
        self.forced = True
        if self._critical:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A block a forced stop must not cut (a journal write)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
            if not self._critical and self._pending:
                self._pending = False
                raise KeyboardInterrupt


def _say(message: str) -> None:
    # os.write: safe inside a signal handler, unlike print() or rich.
    with contextlib.suppress(OSError):
        os.write(2, (message + "\n").encode())


def warm_up() -> None:
    """Pay torch's one-time lazy costs before any probe's clock starts.

    The first optimizer a process builds imports ``torch._dynamo`` (about 2 s here), and the
    first backward starts autograd's machinery; charged to the first probe, that alone could
    push it past a ``probe.timeout_s`` of a second or two.
    """
    import torch

    weight = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    (weight * 2.0).sum().backward()
    optimizer.step()


def run_cohorts(engine: Engine, problem: Problem, cohorts: list[Cohort],
                settings: EngineSettings, keys: dict[int, str], data: TensorData,
                on_record: RecordSink, on_steps: StepSink,
                stop_requested: Callable[[], bool],
                on_cohort: Callable[[int], None] | None = None,
                on_note: NoteSink | None = None) -> None:
    """Run ``cohorts`` one after another in this process, stopping cleanly on request.

    Once a stop is requested, the probes already running finish and are reported; the engine
    is left at its next step report after that (the next probe has started but not
    finished), and no further cohort starts. This works for any engine: a sequential one
    reports a record, then starts the next probe; a vectorized one reports all of its
    cohort's records together at the end.
    """
    for i, cohort in enumerate(cohorts):
        if stop_requested():
            return
        if on_cohort is not None:
            on_cohort(i)
        if not _run_one(engine, problem, cohort, settings, keys, data,
                        Events(on_record, on_steps, on_note), stop_requested):
            return


def _run_one(engine: Engine, problem: Problem, cohort: Cohort, settings: EngineSettings,
             keys: dict[int, str], data: TensorData, events: Events,
             stop_requested: Callable[[], bool]) -> bool:
    """Run one cohort; False when it was left early because a stop was requested."""
    reported_since_stop = False

    def record(rec: ProbeRecord) -> None:
        nonlocal reported_since_stop
        events.record(rec)
        if stop_requested():
            reported_since_stop = True

    def steps(n: int) -> None:
        if reported_since_stop:
            raise StopScheduling
        events.steps(n)

    try:
        engine.run_cohort(problem, cohort, settings, keys, data,
                          Events(record, steps, events.note))
    except StopScheduling:
        return False
    return True
