"""``torch.amp.GradScaler``'s dynamic loss scaling for a stacked cohort, one scale per
member."""

from __future__ import annotations

from typing import Any

import torch


class StackedScaler:
    """``torch.amp.GradScaler``'s dynamic loss scaling, one scale per member.

    Same defaults and rule: scale 2**16; an overflow (a non-finite unscaled gradient) skips
    that member's step and halves its scale; 2000 clean steps in a row double it.
    """

    INIT, GROWTH, BACKOFF, INTERVAL = 2.0 ** 16, 2.0, 0.5, 2000

    def __init__(self, members: int, device: torch.device) -> None:
        self.scale = torch.full((members,), self.INIT, dtype=torch.float32, device=device)
        self.growth = torch.zeros(members, dtype=torch.int32, device=device)

    def inverse(self) -> torch.Tensor:
        """``[P, 1]`` 1/scale, computed as GradScaler does (in float64, then float32)."""
        return self.scale.double().reciprocal().float().unsqueeze(-1)

    def update(self, found_inf: torch.Tensor) -> None:
        """After a step: back off where a member overflowed, grow after a clean streak."""
        streak = torch.where(found_inf, torch.zeros_like(self.growth), self.growth + 1)
        grow = streak >= self.INTERVAL
        scale = torch.where(found_inf, self.scale * self.BACKOFF, self.scale)
        self.scale = torch.where(grow, scale * self.GROWTH, scale)
        self.growth = torch.where(grow, torch.zeros_like(streak), streak)

    def keep(self, rows: torch.Tensor) -> None:
        self.scale, self.growth = self.scale[rows], self.growth[rows]

    def snapshot(self) -> dict[str, Any]:
        return {"scale": self.scale.clone(), "growth": self.growth.clone()}

    @classmethod
    def state_dict(cls, snap: dict[str, Any], pos: int) -> dict[str, Any]:
        """One member's state in ``GradScaler.load_state_dict``'s format."""
        return {"scale": float(snap["scale"][pos]), "growth_factor": cls.GROWTH,
                "backoff_factor": cls.BACKOFF, "growth_interval": cls.INTERVAL,
                "_growth_tracker": int(snap["growth"][pos])}
