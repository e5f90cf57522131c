"""Progress display: a rich bar on a terminal, plain lines in CI, nothing with ``-q``."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stabcheck.records import CRASHED, ProbeRecord


def _outcome(record: ProbeRecord) -> str:
    loss = [v for v in record.trace.get("loss", []) if v is not None]
    final = f", final loss {loss[-1]:.4g}" if loss else ""
    if record.outcome == "nonfinite":
        return f"non-finite {record.nonfinite_what} at step {record.first_nonfinite_step}"
    if record.outcome in CRASHED:
        err = record.error or {}
        return f"{record.outcome}: {err.get('type', '')} {err.get('message', '')}".strip()
    return f"completed {record.steps_run} steps{final}"


class StepClock:
    """Probe steps done out of the whole audit's, and an ETA from the measured step rate.

    A probe that stops early (non-finite, error) never runs its remaining steps: they count
    as done when it finishes, so the total stays the audit's and ``done`` never passes it.
    """

    def __init__(self) -> None:
        self.total = self.done = self.per_probe = 0
        self.t0 = time.monotonic()
        self.measured = 0  # steps actually run since start (the rate's numerator)

    def start(self, total: int, done: int, per_probe: int) -> None:
        self.total, self.done, self.per_probe = total, done, per_probe
        self.t0, self.measured = time.monotonic(), 0

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        self.measured += n

    def finished(self, steps_run: int) -> None:
        self.done = min(self.total, self.done + max(0, self.per_probe - steps_run))

    def eta_s(self) -> float | None:
        elapsed = time.monotonic() - self.t0
        if self.measured <= 0 or elapsed <= 0:
            return None
        return (self.total - self.done) / (self.measured / elapsed)

    def summary(self) -> str:
        eta = self.eta_s()
        tail = f", ETA {eta:.0f}s" if eta is not None else ""
        return f"steps {self.done}/{self.total}{tail}"


# A phase line's opening words → the phase its time is charged to (a cohort is training).
PHASES = (("building", "building"), ("init checks", "init checks"),
          ("curvature at init", "curvature at init"), ("training", "training"),
          ("cohort", "training"), ("report", "report"))


class PhaseClock:
    """Wall time per phase of the audit, summed over seeds and cohorts, for ``-v``."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.current: str | None = None
        self.since = time.monotonic()

    def enter(self, text: str) -> str | None:
        """A phase line was shown: charge the time so far to the phase it ends; return the
        phase the line starts."""
        kind = next((k for prefix, k in PHASES if text.startswith(prefix)), None)
        if kind is None:
            return None  # not a phase of its own (a note-like line): the current one goes on
        self._close()
        self.current = kind
        return kind

    def _close(self) -> None:
        now = time.monotonic()
        if self.current is not None:
            self.spent[self.current] = self.spent.get(self.current, 0.0) + now - self.since
        self.since = now

    def summary(self) -> str:
        """``timings: building 0.41s · init checks 1.2s · ...`` up to now."""
        self._close()
        self.current = None
        names = dict.fromkeys(name for _, name in PHASES)  # in order, each once
        return "timings: " + " · ".join(f"{name} {self.spent[name]:.2f}s" for name in names
                                        if name in self.spent)


class PlainProgress:
    """One line per finished probe: for CI logs and pipes (no animation)."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.total = 0
        self.done = 0
        self.clock = StepClock()
        self.phases = PhaseClock()

    def start(self, total: int, done: int, steps_per_probe: int) -> None:
        """Announce the run."""
        self.total, self.done = total, done
        self.clock.start(total * steps_per_probe, done * steps_per_probe, steps_per_probe)
        resumed = f" ({done} already done, resuming)" if done else ""
        self.console.print(f"running {total} probes of {steps_per_probe} steps{resumed}",
                           highlight=False)

    def steps(self, n: int) -> None:
        """Count the steps (they show on the next probe line)."""
        self.clock.advance(n)

    def probe_done(self, record: ProbeRecord) -> None:
        """Print one line for the probe, with the audit's steps so far and an ETA."""
        self.done += 1
        self.clock.finished(record.steps_run)
        width = len(str(self.total))
        self.console.print(f"[{self.done:>{width}}/{self.total}] {record.label}: "
                           f"{_outcome(record)} ({record.wall_time_s:.2f}s) · "
                           f"{self.clock.summary()}", highlight=False, markup=False)

    def phase(self, text: str) -> None:
        """Say what the audit is doing now (init checks, the cohort that trains, ...).

        "building" shows with ``-v`` only: a config or user-code error while building stays
        the one line that says what is wrong."""
        if self.phases.enter(text) == "building" and not self.verbose:
            return
        self.console.print(f"-- {text}", highlight=False, markup=False)

    def note(self, message: str) -> None:
        """Print a note."""
        self.console.print(f"note: {message}", highlight=False, markup=False)

    def stop(self) -> None:
        """Nothing to tear down."""

    def finish(self) -> None:
        """After the report: with ``-v``, the time each phase took."""
        if self.verbose:
            self.console.print(self.phases.summary(), highlight=False, markup=False)


class RichProgress:
    """A live bar over probes plus one over the running cohort's steps, with an ETA."""

    def __init__(self, console: Console, verbose: bool = False) -> None:
        self.console = console
        self.verbose = verbose
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=True,
        )
        self.probes: TaskID | None = None
        self.step_task: TaskID | None = None
        self.steps_per_probe = 1
        self.phases = PhaseClock()

    def start(self, total: int, done: int, steps_per_probe: int) -> None:
        """Show the bars."""
        self.steps_per_probe = steps_per_probe
        self.bar.start()
        self.probes = self.bar.add_task("probes", total=total, completed=done)
        # Steps over the whole audit (a cohort reports the steps of all its members): the
        # ETA column of this bar comes from the measured step rate.
        self.step_task = self.bar.add_task("steps", total=total * steps_per_probe,
                                           completed=done * steps_per_probe)

    def steps(self, n: int) -> None:
        """Advance the step bar."""
        if self.step_task is not None:
            self.bar.advance(self.step_task, n)

    def probe_done(self, record: ProbeRecord) -> None:
        """Advance the probe bar and log unusual outcomes above it."""
        if self.probes is not None:
            self.bar.advance(self.probes, 1)
        if self.step_task is not None and record.steps_run < self.steps_per_probe:
            # the steps a probe that stopped early will never run
            self.bar.advance(self.step_task, self.steps_per_probe - record.steps_run)
        if record.outcome != "completed" or self.verbose:
            self.bar.console.print(f"{record.label}: {_outcome(record)}", markup=False,
                                   highlight=False)

    def phase(self, text: str) -> None:
        """Show the phase as the probes bar's description (and above it with ``-v``)."""
        self.phases.enter(text)
        if self.probes is not None:  # the bar keeps it short: "cohort 2 of 4", not its members
            self.bar.update(self.probes, description=text.split(" (")[0].split(":")[0])
        if self.verbose:
            self.bar.console.print(f"-- {text}", markup=False, highlight=False)

    def note(self, message: str) -> None:
        """Print a note above the bars."""
        self.bar.console.print(f"note: {message}", markup=False, highlight=False)

    def stop(self) -> None:
        """Remove the bars."""
        self.bar.stop()

    def finish(self) -> None:
        """After the report: with ``-v``, the time each phase took."""
        if self.verbose:
            self.console.print(self.phases.summary(), highlight=False, markup=False)


class QuietProgress:
    """``-q``: nothing at all."""

    def start(self, total: int, done: int, steps_per_probe: int) -> None:
        """Nothing."""

    def steps(self, n: int) -> None:
        """Nothing."""

    def probe_done(self, record: ProbeRecord) -> None:
        """Nothing."""

    def phase(self, text: str) -> None:
        """Nothing."""

    def note(self, message: str) -> None:
        """Nothing."""

    def stop(self) -> None:
        """Nothing."""

    def finish(self) -> None:
        """Nothing."""
