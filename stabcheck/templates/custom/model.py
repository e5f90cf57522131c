"""Your model, referenced from stabcheck.yaml as "./model.py:build". Replace the body."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A small residual MLP: replace it with your own nn.Module."""

    def __init__(self, in_features: int, width: int, n_classes: int) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, width)
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(h + self.block(h))


def build(in_features: int = 16, width: int = 64, n_classes: int = 4) -> nn.Module:
    """Return the model to audit; its keyword arguments come from the config's kwargs."""
    return Classifier(in_features, width, n_classes)
