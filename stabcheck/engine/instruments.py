"""What every engine measures, and the pieces both engines share.

Per step, each probe records the columns of :data:`STAT_COLUMNS` plus one gradient norm per
layer. They are written into a preallocated buffer *on the device*
(:class:`stabcheck.engine.stats.StatBuffer`) and copied to the host every ``flush_every``
steps, so the hot loop never waits for the device.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from stabcheck.problem import Problem

# Column order of the per-step statistics buffer.
STAT_COLUMNS = (
    "loss",          # training loss of the step's batch (before the update)
    "grad_norm",     # global L2 norm of the gradient, before clipping
    "clipped",       # 1 when clipping scaled the gradient down
    "update_ratio",  # ||Δθ|| / ||θ||: how far the step moved the weights, relative to them
    "param_norm",    # ||θ|| after the step (non-finite once a parameter is)
    "lr",            # effective learning rate (after warmup)
    "skipped",       # 1 when fp16 GradScaler skipped the step for an overflow
)
COL = {name: i for i, name in enumerate(STAT_COLUMNS)}

# torch.nn.utils.clip_grad_norm_ adds this to the norm before dividing; so do we, so that
# "clipped" means exactly what PyTorch's clipping would have done.
CLIP_EPS = 1e-6


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(problem: Problem, seed: int) -> nn.Module:
    """Seed, build, move to the device, train mode: the one way every engine, check and
    measurement makes a probe's model, so that a seed means the same initial weights
    everywhere."""
    seed_everything(seed)
    model = problem.build_model().to(problem.device)
    model.train()
    return model


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Python, NumPy and torch RNG states (the CPU's and every initialised CUDA device's)
    restored on exit: a measurement, or rebuilding a probe (which re-seeds), inside it leaves
    the training's random stream where it was."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() \
        and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)


def batch_order(seed: int, n_samples: int, batch_size: int, steps: int) -> torch.Tensor:
    """``[steps, batch_size]`` sample indices: a seeded permutation, reshuffled every epoch.

    The last incomplete batch of an epoch is dropped, so every step has the same shape (which
    the vectorized engine needs, and which keeps the gradient noise level constant).
    """
    per_epoch = n_samples // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch size {batch_size} is larger than the dataset ({n_samples})")
    g = torch.Generator().manual_seed(int(seed))
    epochs = -(-steps // per_epoch)
    chunks = [torch.randperm(n_samples, generator=g)[: per_epoch * batch_size]
              for _ in range(epochs)]
    return torch.cat(chunks).view(-1, batch_size)[:steps]


def warmup_factors(steps: int, warmup_steps: int) -> torch.Tensor:
    """Linear warmup: step ``t`` uses ``lr * (t + 1) / warmup_steps`` until warmup ends."""
    t = torch.arange(steps, dtype=torch.float64)
    if warmup_steps <= 0:
        return torch.ones(steps, dtype=torch.float64)
    return torch.clamp((t + 1) / warmup_steps, max=1.0)


@dataclass(frozen=True)
class LayerMap:
    """Which layer (owning module) each parameter belongs to, in depth order."""

    names: tuple[str, ...]
    param_names: tuple[str, ...]
    param_layer: tuple[int, ...]

    @classmethod
    def from_names(cls, param_names: Iterable[str]) -> LayerMap:
        """Group ``layers.0.linear.weight`` and ``.bias`` under ``layers.0.linear``."""
        names: list[str] = []
        index: dict[str, int] = {}
        owners: list[int] = []
        params = list(param_names)
        for pname in params:
            layer = pname.rsplit(".", 1)[0] if "." in pname else pname
            if layer not in index:
                index[layer] = len(names)
                names.append(layer)
            owners.append(index[layer])
        return cls(tuple(names), tuple(params), tuple(owners))

    @classmethod
    def of(cls, model: nn.Module) -> LayerMap:
        """The map for a model's trainable parameters."""
        return cls.from_names(n for n, p in model.named_parameters() if p.requires_grad)

    def index_tensor(self, device: torch.device) -> torch.Tensor:
        """Parameter → layer index, for ``index_add_``."""
        return torch.tensor(self.param_layer, dtype=torch.long, device=device)


@dataclass(frozen=True)
class NonFinite:
    """Where a probe first went non-finite: the row, what (loss/gradient/parameter), NaN or Inf."""

    row: int
    what: str
    kind: str


def first_nonfinite(stats: np.ndarray) -> NonFinite | None:
    """First step (row) whose loss, gradient or parameters are non-finite, if any."""
    checks = (("loss", COL["loss"]), ("gradient", COL["grad_norm"]),
              ("parameter", COL["param_norm"]))
    for row in range(stats.shape[0]):
        # fp16: a gradient overflow makes GradScaler skip the step and lower its scale; that
        # is normal loss scaling, not divergence, unless the loss itself is non-finite.
        skipped = stats[row, COL["skipped"]] > 0
        for what, col in checks[:1] if skipped else checks:
            value = stats[row, col]
            if not np.isfinite(value):
                return NonFinite(row, what, "NaN" if np.isnan(value) else "Inf")
    return None


def to_jsonable(values: Any) -> Any:
    """Floats to 7 significant digits, non-finite values as ``None`` (JSON has no NaN);
    nested lists kept."""
    arr = np.asarray(values, dtype=np.float64)
    flat = _rounded(arr.reshape(-1))
    return flat[0] if arr.ndim == 0 else _nested(flat, arr.shape)


def _nested(flat: list[float | None], shape: tuple[int, ...]) -> list[Any]:
    if len(shape) == 1:
        return flat
    size = len(flat) // shape[0] if shape[0] else 0
    return [_nested(flat[i * size:(i + 1) * size], shape[1:]) for i in range(shape[0])]


def _rounded(flat: np.ndarray) -> list[float | None]:
    # One %-format over the whole row and one float() per value: the same correctly rounded
    # digits as float(f"{v:.7g}") value by value, in about 60% of the time.
    finite = np.isfinite(flat).tolist()
    text = ("%.7g," * flat.size) % tuple(np.where(finite, flat, 0.0).tolist())
    return [float(v) if ok else None for v, ok in zip(text.split(","), finite, strict=False)]
