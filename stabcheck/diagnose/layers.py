"""Per-layer facts the gradient and init detectors share: which layers are dense weight
layers, their sizes, and RMS gradients from per-layer norms."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stabcheck.diagnose.results import LayerSummary

# Layers whose gradient scale says nothing about flow through depth: an embedding only gets
# gradient on the rows a batch uses, and normalisation gains are a handful of scalars.
NOT_DENSE = ("Embedding", "EmbeddingBag", "LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm1d",
             "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "Parameter")


def dense_layers(init_layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The init report's layers that are dense weight layers, in depth order."""
    return [layer for layer in init_layers if layer.get("kind") not in NOT_DENSE
            and layer.get("weight_kurtosis") is not None and layer.get("size", 0) > 0]


def rms(norm: float | None, size: int) -> float:
    """RMS of a gradient from its L2 norm and element count (NaN when unknown)."""
    if norm is None or size <= 0 or not math.isfinite(norm):
        return float("nan")
    return norm / math.sqrt(size)


def training_rms(layer_names: list[str], matrix: np.ndarray, sizes: dict[str, int]
                 ) -> dict[str, float]:
    """Median over steps of each layer's RMS gradient during a probe (layers with a size)."""
    out: dict[str, float] = {}
    if matrix.size == 0:
        return out
    for j, name in enumerate(layer_names):
        if name in sizes and sizes[name] > 0:
            column = matrix[:, j]
            column = column[np.isfinite(column)]
            if column.size:
                out[name] = float(np.median(column)) / math.sqrt(sizes[name])
    return out


def layer_summary(names: list[str], matrix: np.ndarray) -> LayerSummary:
    """Per layer (a column of ``matrix``, steps x layers), the min, median and max finite
    gradient norm over the steps."""
    out: dict[str, list[float | None]] = {"min": [], "median": [], "max": []}
    for j in range(len(names)):
        column = matrix[:, j] if matrix.shape[0] and j < matrix.shape[1] else np.array([])
        finite = column[np.isfinite(column)]
        for key, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
            out[key].append(float(fn(finite)) if finite.size else None)
    return LayerSummary(names=tuple(names), grad_norm={k: tuple(v) for k, v in out.items()})
