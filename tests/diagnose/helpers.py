"""Synthetic probe records with known answers, for the detector tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from stabcheck.diagnose import Diagnosis, diagnose
from stabcheck.diagnose.context import Context
from stabcheck.records import ProbeRecord
from stabcheck.thresholds import Thresholds


def record(loss: np.ndarray | list[float], *, grad: np.ndarray | None = None,
           clipped: np.ndarray | None = None, lr: float = 0.1, seed: int = 0,
           batch_size: int = 32, index: int = 0, outcome: str = "completed",
           layers: dict[str, np.ndarray] | None = None,
           first_nonfinite_step: int | None = None) -> ProbeRecord:
    """A probe record whose traces are the given arrays (NaN → None, as the engine stores)."""
    loss = np.asarray(loss, dtype=float)
    n = loss.size
    grad = np.ones(n) if grad is None else np.asarray(grad, dtype=float)
    clipped = np.zeros(n) if clipped is None else np.asarray(clipped, dtype=float)

    def listed(a: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in a]

    layers = layers or {}
    matrix = np.column_stack(list(layers.values())) if layers else np.zeros((n, 0))
    return ProbeRecord(
        lr=lr, seed=seed, batch_size=batch_size, index=index, key=f"k{index}",
        outcome=outcome, steps_planned=n, steps_run=n, layer_names=list(layers),
        trace={"loss": listed(loss), "grad_norm": listed(grad), "clipped": listed(clipped),
               "update_ratio": [1e-3] * n, "param_norm": [1.0] * n, "lr": [lr] * n,
               "skipped": [0.0] * n},
        layer_grad_norms=[listed(row) for row in matrix],
        first_nonfinite_step=first_nonfinite_step)


def decreasing(n: int = 200, seed: int = 0, start: float = 2.0, floor: float = 0.2,
               tau: float = 50.0, noise: float = 0.01) -> np.ndarray:
    """A healthy, noisy, decreasing loss curve."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (floor + (start - floor) * np.exp(-t / tau)) * (1 + noise * rng.standard_normal(n))


def run(records: list[ProbeRecord], config: dict[str, Any] | None = None,
        init: dict[int, dict[str, Any]] | None = None, **thresholds: Any) -> Diagnosis:
    """Diagnose records with optional config fields, init reports and thresholds."""
    ctx = Context(thresholds=Thresholds(**thresholds), config=config or {}, init=init or {})
    return diagnose(records, ctx)


def codes(diagnosis: Diagnosis) -> list[str]:
    """The codes of all findings, sorted."""
    return sorted(f.code for f in diagnosis.findings)
