"""Sharpness tracking during a probe (``probe.curvature_every``)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from stabcheck.engine.curvature.linalg import TRACK_TOL
from stabcheck.engine.curvature.lipschitz import safe_lipschitz
from stabcheck.engine.curvature.measure import (
    PROBE_BATCH,
    measure_curvature,
    probe_batch_index,
    stability_rule,
)
from stabcheck.engine.failures import describe_exception
from stabcheck.problem import Batch, LossFn, TensorData
from stabcheck.records import significant


class CurvatureTracker:
    """Sharpness and EoS ratio of one probe, every ``every`` steps, on its fixed batch.

    The sequential engine calls :meth:`measure` at step 0 (before training) and after every
    ``every``-th step, and :meth:`finish` at the end (which adds the final Lipschitz bound).
    A failure (e.g. a model op with no double backward) stops the tracking, not the probe.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: TensorData,
                 optimizer: torch.optim.Optimizer, seed: int, device: torch.device,
                 batch_size: int = PROBE_BATCH) -> None:
        self.model: nn.Module | None = model
        self.optimizer: torch.optim.Optimizer | None = optimizer
        self.loss_fn = loss_fn
        self.batch = data.batch(probe_batch_index(seed, data.n, device, batch_size))
        self.seed = seed
        self.state: dict[str, Any] = {}
        self.rule = stability_rule(optimizer)
        self.steps: list[int] = []
        self.sharpness: list[float | None] = []
        self.preconditioned: list[float | None] = []
        self.limits: list[float | None] = []
        self.ratios: list[float | None] = []
        self.hvps = 0
        self.time_s = 0.0
        self.error: dict[str, Any] | None = None
        self.lipschitz_init = safe_lipschitz(model)

    def measure(self, step: int, lr: float, model: nn.Module | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> None:
        """Measure before step ``step`` (i.e. after ``step`` optimizer updates) at ``lr``.

        ``model`` and ``optimizer`` stand in for the tracked ones when given (the vectorized
        engine unstacks a member into a fresh model for each measurement).
        """
        if self.error is not None:
            return
        model, optimizer = model or self.model, optimizer or self.optimizer
        if model is None or optimizer is None:
            raise ValueError("CurvatureTracker.measure: released; pass model and optimizer")
        started = time.perf_counter()
        try:
            m = measure_curvature(model, self.loss_fn, self.batch, optimizer, self.state,
                                  lr=lr, seed=self.seed, tol=TRACK_TOL)
        except Exception as exc:
            self.error = describe_exception(exc)
            return
        finally:
            self.time_s += time.perf_counter() - started
        self.steps.append(step)
        self.sharpness.append(m["sharpness"])
        self.preconditioned.append(m["preconditioned"])
        self.limits.append(m["limit"])
        self.ratios.append(m["eos_ratio"])
        self.hvps += int(m["hvps"])

    def release(self) -> None:
        """Drop the model and optimizer (a caller that passes its own to :meth:`measure` and
        :meth:`finish` keeps no second copy alive)."""
        self.model = self.optimizer = None

    def finish(self, tracked: bool = True, model: nn.Module | None = None) -> dict[str, Any]:
        """The probe's curvature record (plain JSON data); only the Lipschitz bounds when
        sharpness tracking is off (``tracked=False``). The final Lipschitz bound is that of
        ``model`` when given, else of the tracked model."""
        model = model or self.model
        final = safe_lipschitz(model) if model is not None else None
        if not tracked:
            return {"lipschitz_init": self.lipschitz_init, "lipschitz_final": final}
        return {"steps": self.steps, "sharpness": self.sharpness,
                "preconditioned": self.preconditioned, "limit": self.limits,
                "eos_ratio": self.ratios, "rule": self.rule.kind,
                "limit_constant": significant(self.rule.constant),
                "probe_batch": _batch_len(self.batch),
                "lipschitz_init": self.lipschitz_init, "lipschitz_final": final,
                "hvps": self.hvps, "time_s": round(self.time_s, 4), "error": self.error}


def _batch_len(batch: Batch) -> int:
    first = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return int(first.shape[0])
