"""A user-defined model, referenced from config.yaml as "./models.py:build"."""

from __future__ import annotations

import torch
from torch import nn


class TwoSpirals(nn.Module):
    """A small residual MLP with LayerNorm: the kind of model you would audit for real."""

    def __init__(self, width: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.stem = nn.Linear(2, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(),
                          nn.Dropout(dropout))
            for _ in range(depth)
        )
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def build(width: int = 64, depth: int = 3, dropout: float = 0.0) -> nn.Module:
    """Factory named in the config; its keyword arguments are checked before training."""
    return TwoSpirals(width, depth, dropout)
