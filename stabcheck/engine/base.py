"""The engine contract: settings, the events an engine reports, and the engine registry.

An engine runs one cohort of probes and reports through :class:`EngineEvents`: each finished
probe's record at once, step counts at every flush, and one-line notes (a run-time fallback,
say) that the audit journals so the report shows them. Engines declare what executors must
know of them (:attr:`Engine.runs_cohort_together`) instead of being inspected.

An :class:`EngineSpec` (name and options) is what crosses a process boundary: a worker
builds exactly the engine the parent chose, options and fallback reason included. Nothing
here imports torch: the CLI lists :data:`ENGINE_CHOICES` without paying for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stabcheck.lazy import load

if TYPE_CHECKING:
    from stabcheck.plan import Cohort
    from stabcheck.problem import Problem, TensorData
    from stabcheck.records import ProbeRecord

RecordSink = Callable[["ProbeRecord"], None]
StepSink = Callable[[int], None]
NoteSink = Callable[[str], None]


@dataclass(frozen=True)
class EngineSettings:
    """The ``probe:`` section, as the engines use it."""

    steps: int
    grad_clip: float | None = None
    warmup_steps: int = 0
    dtype: str = "float32"
    flush_every: int = 50
    timeout_s: float | None = None
    curvature_every: int | None = None
    curvature_batch: int | None = None

    @classmethod
    def from_config(cls, probe: Any) -> EngineSettings:
        """Build from a :class:`stabcheck.schema.ProbeSection`."""
        return cls(steps=probe.steps, grad_clip=probe.grad_clip, warmup_steps=probe.warmup_steps,
                   dtype=probe.dtype, flush_every=probe.flush_every, timeout_s=probe.timeout_s,
                   curvature_every=probe.curvature_every,
                   curvature_batch=probe.curvature_batch)


class EngineEvents(Protocol):
    """What an engine reports while it runs a cohort."""

    def record(self, record: ProbeRecord) -> None:
        """A probe finished: its record, at once (the journal stores it before anything)."""

    def steps(self, n: int) -> None:
        """``n`` more probe steps are done (called at every flush)."""

    def note(self, message: str) -> None:
        """A one-line note for the report (e.g. a run-time fallback)."""


@dataclass
class Events:
    """:class:`EngineEvents` from plain callables; steps and notes are optional."""

    on_record: RecordSink
    on_steps: StepSink | None = None
    on_note: NoteSink | None = None

    def record(self, record: ProbeRecord) -> None:
        self.on_record(record)

    def steps(self, n: int) -> None:
        if self.on_steps is not None:
            self.on_steps(n)

    def note(self, message: str) -> None:
        if self.on_note is not None:
            self.on_note(message)


@dataclass(frozen=True)
class EngineSpec:
    """A picklable engine choice: a registered name and the options it is built with."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Engine:
        """A new engine, exactly as specified."""
        return get_engine(self.name, **self.options)


class Engine(Protocol):
    """Runs a cohort and hands each finished probe's record to ``events.record`` at once."""

    name: str
    # True: all of a cohort's probes are in flight at once (a hang or crash is charged to
    # all of them); False: one probe at a time.
    runs_cohort_together: bool

    @property
    def spec(self) -> EngineSpec:
        """How to build this very engine again (in a worker process)."""

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, events: EngineEvents) -> None:
        """Run every probe of ``cohort``."""


# Engines by name → where the class lives (imported when first built). A new engine is one
# module and one line here.
ENGINES: dict[str, str | Callable[..., Engine]] = {
    "sequential": "stabcheck.engine.sequential:SequentialEngine",
    "vectorized": "stabcheck.engine.vectorized:VectorizedEngine",
    # Chosen by the audit whenever the config names a training step (``step:``).
    "custom-step": "stabcheck.engine.custom:CustomStepEngine",
}
# What ``--engine`` accepts: ``auto`` picks the vectorized engine where it can run.
ENGINE_CHOICES = ("auto", "vectorized", "sequential")


def get_engine(name: str, **options: Any) -> Engine:
    """A new engine of the given registered name (``sequential``, …)."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}"
                         ) from None
    if isinstance(factory, str):
        factory = load(factory)
    engine: Engine = factory(**options)
    return engine
