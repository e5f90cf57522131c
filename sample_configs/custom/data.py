"""A user-defined dataset, referenced from config.yaml as "./data.py:make"."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset


class Spirals(Dataset):
    """Two interleaved spirals: a map-style Dataset yielding (point, label) pairs."""

    def __init__(self, n_samples: int, noise: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        t = torch.rand(n_samples, generator=g) * 3 * math.pi
        label = torch.arange(n_samples) % 2
        angle = t + label * math.pi
        radius = t / (3 * math.pi)
        points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        self.points = points + noise * torch.randn(n_samples, 2, generator=g)
        self.labels = label

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.points[i], self.labels[i]


def make(n_samples: int = 2048, noise: float = 0.02, seed: int = 0) -> Dataset:
    """Factory named in the config: returns a torch Dataset."""
    return Spirals(n_samples, noise, seed)
