"""The per-step statistics buffer: preallocated on the device, written by column name,
copied to the host in chunks.

One buffer serves one probe (``[steps, C]``) or a stacked cohort (``[P, steps, C]``, with
``leading=(P,)``): :meth:`StatBuffer.write` takes each column's value by name (a scalar per
probe, or a ``[P]`` vector per cohort), so no engine depends on the column order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from stabcheck.engine.instruments import COL, STAT_COLUMNS


@lru_cache(maxsize=64)
def _runs(names: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """``names`` (in :data:`STAT_COLUMNS` order) as contiguous runs ``(lo, hi, first)``: the
    buffer columns ``lo:hi`` take the stacked values ``first:first + hi - lo``."""
    cols = [COL[n] for n in names]
    if cols != sorted(cols):
        raise ValueError(f"write columns in STAT_COLUMNS order: {names}")
    runs: list[tuple[int, int, int]] = []
    for i, c in enumerate(cols):
        if runs and runs[-1][1] == c:
            lo, hi, first = runs[-1]
            runs[-1] = (lo, hi + 1, first)
        else:
            runs.append((c, c + 1, i))
    return tuple(runs)


@dataclass
class StatBuffer:
    """Preallocated on-device statistics, flushed to host numpy arrays in chunks."""

    steps: int
    n_layers: int
    device: torch.device
    leading: tuple[int, ...] = ()
    stats: torch.Tensor = field(init=False)
    layers: torch.Tensor = field(init=False)
    host_stats: np.ndarray = field(init=False)
    host_layers: np.ndarray = field(init=False)
    flushed: int = 0

    def __post_init__(self) -> None:
        shape = (*self.leading, self.steps)
        self.stats = torch.full((*shape, len(STAT_COLUMNS)), float("nan"), device=self.device)
        self.layers = torch.full((*shape, self.n_layers), float("nan"), device=self.device)
        self.host_stats = np.full((*shape, len(STAT_COLUMNS)), np.nan, dtype=np.float32)
        self.host_layers = np.full((*shape, self.n_layers), np.nan, dtype=np.float32)

    def fill(self, name: str, values: torch.Tensor | float) -> None:
        """Column ``name`` for every step at once (``[steps]``, or ``[P, steps]``)."""
        self.stats[..., COL[name]] = values

    def write(self, step: int, layers: torch.Tensor, rows: torch.Tensor | None = None,
              **columns: torch.Tensor) -> None:
        """Step ``step``'s statistics: each column by name, and the per-layer gradient norms.

        For a cohort, values are ``[live]`` vectors and ``rows`` (when not every member is
        live) says which buffer rows they belong to. No host sync: these are device copies.
        """
        values = torch.stack([v.float() for v in columns.values()], dim=-1)
        stats = self.stats[..., step, :]
        for lo, hi, first in _runs(tuple(columns)):
            part = values[..., first:first + hi - lo]
            if rows is None:
                stats[..., lo:hi] = part
            else:
                stats[:, lo:hi] = stats[:, lo:hi].index_copy(0, rows, part)
        if rows is None:
            self.layers[..., step, :] = layers.float()
        else:
            self.layers[:, step].index_copy_(0, rows, layers.float())

    def flush(self, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """Copy steps ``[flushed, upto)`` to the host (one sync) and return them."""
        lo = self.flushed
        if upto > lo:
            # Slicing the last-but-one axis works for both [steps, C] and [P, steps, C].
            self.host_stats[..., lo:upto, :] = self.stats[..., lo:upto, :].float().cpu().numpy()
            self.host_layers[..., lo:upto, :] = self.layers[..., lo:upto, :].float().cpu().numpy()
            self.flushed = upto
        return self.host_stats[..., lo:upto, :], self.host_layers[..., lo:upto, :]
