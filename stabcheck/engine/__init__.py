"""Engines run cohorts of probes. Each yields one :class:`ProbeRecord` per probe.

* ``sequential`` — the reference: one probe at a time, a plain PyTorch loop.
* ``vectorized`` — a cohort's probes stacked and run as one ``vmap``-ed step
  (:mod:`stabcheck.engine.vectorized`); :func:`~stabcheck.engine.vectorized.select_engine`
  picks it when the model and optimizer allow and says why when they do not.

Both produce identical record layouts; the choice only changes speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stabcheck.engine.sequential import EngineSettings, run_probe
from stabcheck.plan import Cohort
from stabcheck.problem import Problem, TensorData
from stabcheck.records import ProbeRecord

RecordSink = Callable[[ProbeRecord], None]
StepSink = Callable[[int], None]


class Engine(Protocol):
    """Runs a cohort and hands each finished probe's record to ``on_record`` at once."""

    name: str

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, on_record: RecordSink,
                   on_steps: StepSink | None = None) -> None:
        """Run every probe of ``cohort``."""


class SequentialEngine:
    """The reference engine: probes one after another."""

    name = "sequential"

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, on_record: RecordSink,
                   on_steps: StepSink | None = None) -> None:
        """Run every probe of ``cohort``, one at a time."""
        for spec in cohort.probes:
            on_record(run_probe(problem, spec, settings, keys[spec.index], data, on_steps))


def _vectorized() -> Engine:
    from stabcheck.engine.vectorized import VectorizedEngine

    return VectorizedEngine()


# Engines by name, so a worker process can build the same engine from a string.
ENGINES: dict[str, Callable[[], Engine]] = {"sequential": SequentialEngine,
                                            "vectorized": _vectorized}


def get_engine(name: str) -> Engine:
    """A new engine of the given registered name (``sequential``, …)."""
    try:
        return ENGINES[name]()
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}"
                         ) from None


__all__ = ["ENGINES", "Engine", "EngineSettings", "SequentialEngine", "get_engine", "run_probe"]
