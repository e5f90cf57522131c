"""Which engine runs an audit: the vectorized one where it can, the reference otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from stabcheck.engine.base import ENGINE_CHOICES, Engine, EngineSettings
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized.eligibility import vectorized_choice
from stabcheck.engine.vectorized.engine import VectorizedEngine
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Problem, TensorData


def select_engine(problem: Problem, requested: str, settings: EngineSettings,
                  data: TensorData, probes: Sequence[ProbeSpec]) -> tuple[Engine, str | None]:
    """The engine to run ``probes`` with, and a one-line note when it is not the one asked for.

    ``auto`` and ``vectorized`` both use the vectorized engine when it can run the problem
    and fall back to the sequential one (with the reason, which every record then notes)
    when it cannot.
    """
    if requested not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {requested!r}; expected one of {ENGINE_CHOICES}")
    if requested == "sequential":
        return SequentialEngine(), None
    reason, options = vectorized_choice(problem, settings, data, probes)
    if reason is None:
        return VectorizedEngine(**options), None
    return SequentialEngine(fallback_reason=reason), f"sequential engine used: {reason}"
