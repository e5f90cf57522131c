"""The record of one finished probe: what the engine measured, as plain data.

A record is what the journal stores (one JSON line each) and what the diagnosis reads. It
holds raw measurements and the engine's *outcome*; the probe's *status* (healthy, unstable,
diverged, …) is a diagnosis of those measurements and is computed downstream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stabcheck.plan import ProbeSpec

# What the engine says happened to a probe (its *status* is a diagnosis, made downstream).
OUTCOMES = ("completed", "nonfinite", "error", "timeout", "oom")
# The outcomes of a probe that did not run to a result; each is also that probe's status.
CRASHED = ("error", "timeout", "oom")
# Trace columns of a custom step's named losses: ``loss/<name>`` (stabcheck.engine.custom).
NAMED_LOSS = "loss/"


def significant(value: float | None) -> float | None:
    """A number as reports keep it: 6 significant digits, ``None`` when missing or not
    finite."""
    if value is None or not np.isfinite(value):
        return None
    return float(f"{value:.6g}")


@dataclass
class ProbeRecord:
    """One probe's measurements. Traces hold ``steps_run`` entries; ``None`` is non-finite."""

    lr: float
    seed: int
    batch_size: int
    index: int
    key: str
    outcome: str
    steps_planned: int
    steps_run: int
    layer_names: list[str] = field(default_factory=list)
    trace: dict[str, list[float | None]] = field(default_factory=dict)
    layer_grad_norms: list[list[float | None]] = field(default_factory=list)
    first_nonfinite_step: int | None = None
    nonfinite_what: str | None = None
    nonfinite_kind: str | None = None
    nonfinite_module: str | None = None
    wall_time_s: float = 0.0
    engine: str = "sequential"
    error: dict[str, Any] | None = None
    curvature: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def for_probe(cls, spec: ProbeSpec, key: str, steps_planned: int, engine: str,
                  **fields: Any) -> ProbeRecord:
        """The record of grid point ``spec`` before it has run: ``completed`` with no step
        yet, unless ``fields`` say otherwise."""
        fields.setdefault("outcome", "completed")
        return cls(lr=spec.lr, seed=spec.seed, batch_size=spec.batch_size, index=spec.index,
                   key=key, steps_planned=steps_planned, steps_run=0, engine=engine, **fields)

    @property
    def label(self) -> str:
        """``lr=0.1 seed=2 bs=32``."""
        return f"lr={self.lr:g} seed={self.seed} bs={self.batch_size}"

    def series(self, column: str) -> np.ndarray:
        """One trace column as float64 with NaN for non-finite steps."""
        values = self.trace.get(column, [])
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def layer_matrix(self) -> np.ndarray:
        """``[steps_run, n_layers]`` per-layer gradient norms."""
        if not self.layer_grad_norms:
            return np.zeros((0, len(self.layer_names)))
        return np.array([[np.nan if v is None else v for v in row]
                         for row in self.layer_grad_norms], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (a deep copy)."""
        return asdict(self)

    def field_values(self) -> dict[str, Any]:
        """The fields as they are, for serialising at once: :meth:`to_dict` without its deep
        copy (which, over 500-step traces, cost more than the JSON encoding itself)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeRecord:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})



def loss_views(record: ProbeRecord) -> dict[str, ProbeRecord]:
    """The record once per named loss, when the loss detectors judge each on its own.

    A custom step that returns a dict with a ``loss`` entry declares it primary: the trace's
    ``loss`` column is that entry, and it alone is judged (``{}`` here). A dict without one
    (a GAN's ``{"d_loss": …, "g_loss": …}``) has no loss anyone minimises: its ``loss``
    column is the sum, whose rise or fall says nothing, so each named loss is judged on its
    own, through a copy of the record whose ``loss`` column is that loss.
    """
    names = [column[len(NAMED_LOSS):] for column in record.trace
             if column.startswith(NAMED_LOSS)]
    if not names or "loss" in names:
        return {}
    return {name: replace(record, trace={**record.trace, "loss": record.trace[NAMED_LOSS + name]})
            for name in names}
