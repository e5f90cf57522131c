"""What detectors may know besides a probe's own record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stabcheck.thresholds import Thresholds


@dataclass(frozen=True)
class Context:
    """Thresholds, the resolved config (JSON form) and the before-training checks per seed."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    config: dict[str, Any] = field(default_factory=dict)
    init: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def target_lr(self) -> float | None:
        """The LR the user intends for the real run, if given."""
        value = self.config.get("target_lr")
        return float(value) if value is not None else None

    @property
    def target_batch_size(self) -> int | None:
        """The batch size of the real run, if given."""
        value = self.config.get("target_batch_size")
        return int(value) if value is not None else None

    @property
    def optimizer(self) -> tuple[str, dict[str, Any]]:
        """Optimizer name and kwargs (``("sgd", {})`` when not configured)."""
        opt = self.config.get("optimizer") or {}
        return str(opt.get("name", "sgd")), dict(opt.get("kwargs") or {})

    @property
    def grad_clip(self) -> float | None:
        """``probe.grad_clip``."""
        return (self.config.get("probe") or {}).get("grad_clip")
