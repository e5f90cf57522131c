"""What a data factory returned, as one in-memory :class:`TensorData`.

A factory may return a torch ``Dataset`` (map-style), a tensor, a tuple or list of tensors
``(inputs, targets)``, or a dict of tensors; NumPy arrays are accepted wherever a tensor is
and converted with a note, and so are float64 tensors (to float32: probes train in float32
or lower). Anything else is a :class:`DataShapeError` saying what was returned and what is
expected; the caller locates it at the config line (exit 2). A ``Dataset`` whose items raise
when read is user code failing at run time: :class:`UserCodeError` (exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stabcheck.errors import UserCodeError

Batch = tuple[torch.Tensor, ...] | dict[str, torch.Tensor]
EXPECTED = ("expected a torch Dataset, a tuple of tensors or NumPy arrays (inputs, targets), or "
            "a dict of them")


# Batch keys that Hugging Face models read as attention masks (1 = attend).
TRIVIAL_MASK_KEYS = ("attention_mask", "decoder_attention_mask")


class DataShapeError(ValueError):
    """The data factory returned something stabcheck cannot train on."""


@dataclass
class TensorData:
    """An in-memory dataset: a tuple or a dict of tensors sharing their first dimension."""

    tensors: tuple[torch.Tensor, ...] | dict[str, torch.Tensor]

    @property
    def n(self) -> int:
        """Number of samples."""
        first = next(iter(self.tensors.values())) if isinstance(self.tensors, dict) \
            else self.tensors[0]
        return int(first.shape[0])

    def to(self, device: torch.device) -> TensorData:
        """A copy with every tensor on ``device``."""
        if isinstance(self.tensors, dict):
            return TensorData({k: v.to(device) for k, v in self.tensors.items()})
        return TensorData(tuple(t.to(device) for t in self.tensors))

    def batch(self, index: torch.Tensor) -> Batch:
        """Gather the samples at ``index`` (any shape of indices, e.g. ``[P, B]``)."""
        if isinstance(self.tensors, dict):
            return {k: v[index] for k, v in self.tensors.items()}
        return tuple(t[index] for t in self.tensors)

    def without_trivial_masks(self) -> tuple[TensorData, tuple[str, ...]]:
        """This data without the attention masks that mask nothing, and which keys were dropped.

        A Hugging Face ``attention_mask`` (or ``decoder_attention_mask``) of all ones over the
        whole dataset attends to every token, as no mask does; but ``transformers`` reads the
        mask's values in Python to pick its attention path, which ``vmap`` refuses. Checked
        once here, on the whole dataset, so the stacked step can leave such a mask out.
        """
        if not isinstance(self.tensors, dict):
            return self, ()
        dropped = tuple(k for k in TRIVIAL_MASK_KEYS if k in self.tensors
                        and bool((self.tensors[k] == 1).all()))
        if not dropped:
            return self, ()
        return TensorData({k: v for k, v in self.tensors.items() if k not in dropped}), dropped

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` pairs: dict keys, or ``inputs``/``targets``/``tensor N``."""
        if isinstance(self.tensors, dict):
            return list(self.tensors.items())
        names = ["inputs", "targets"] if len(self.tensors) == 2 else \
            [f"tensor {i}" for i in range(len(self.tensors))]
        return list(zip(names, self.tensors, strict=True))


def _describe(obj: Any) -> str:
    if isinstance(obj, tuple | list):
        inner = ", ".join(type(t).__name__ for t in obj[:4]) + (", …" if len(obj) > 4 else "")
        return f"a {type(obj).__name__} of ({inner})"
    if isinstance(obj, dict):
        inner = ", ".join(f"{k}: {type(v).__name__}" for k, v in list(obj.items())[:4])
        return f"a dict of ({inner})"
    return f"a {type(obj).__name__}"


def _tensor(value: Any, name: str, notes: list[str]) -> torch.Tensor | None:
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise DataShapeError(f"{name} is a NumPy array of dtype {value.dtype}; expected "
                                 "numbers (encode strings or objects as numbers first)")
        notes.append(f"the data factory's {name}: NumPy array converted to a tensor")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        return None
    if value.dtype == torch.float64:
        notes.append(f"the data factory's {name}: float64 converted to float32")
        value = value.float()
    return value


def as_tensor_data(obj: Any, max_samples: int, where: str, notes: list[str]) -> TensorData:
    """Turn what ``where`` returned into :class:`TensorData`; conversions are noted."""
    data: TensorData | None = None
    if isinstance(obj, torch.Tensor | np.ndarray):
        obj = (obj,)
    if isinstance(obj, tuple | list) and obj:
        names = ["inputs", "targets"] if len(obj) == 2 else [f"element {i}"
                                                             for i in range(len(obj))]
        converted = [_tensor(t, n, notes) for t, n in zip(obj, names, strict=True)]
        if all(t is not None for t in converted):
            data = TensorData(tuple(t for t in converted if t is not None))
    elif isinstance(obj, dict) and obj:
        items = {str(k): _tensor(v, repr(str(k)), notes) for k, v in obj.items()}
        if all(t is not None for t in items.values()):
            data = TensorData({k: t for k, t in items.items() if t is not None})
    elif isinstance(obj, torch.utils.data.Dataset):
        data = _materialise(obj, max_samples, where, notes)
    if data is None:
        raise DataShapeError(f"{where} returned {_describe(obj)}; {EXPECTED}")
    sizes = {int(t.shape[0]) if t.dim() else -1 for _, t in data.items()}
    if len(sizes) != 1 or -1 in sizes:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in data.items())
        raise DataShapeError(f"{where} returned tensors whose first dimensions (samples) "
                             f"differ: {shapes}; every tensor needs one row per sample")
    if data.n == 0:
        raise DataShapeError(f"{where} returned an empty dataset (0 samples)")
    return data


def _materialise(dataset: torch.utils.data.Dataset[Any], max_samples: int,
                 where: str, notes: list[str]) -> TensorData:
    # Probes are short, so a Dataset is read once into memory; every probe then draws its
    # batches by index gathers, on the device, with no DataLoader workers to coordinate.
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataShapeError(f"{where} returned a Dataset without __len__ (an "
                             "IterableDataset?); stabcheck needs a map-style Dataset") from None
    count = min(size, max_samples)
    try:
        items = [dataset[i] for i in range(count)]
        batch = torch.utils.data.default_collate(items)
    except Exception as exc:
        raise UserCodeError(f"reading {where}'s Dataset raised {type(exc).__name__}: {exc}") \
            from exc
    if isinstance(batch, torch.Tensor | list | tuple | dict):
        try:
            return as_tensor_data(batch, max_samples, f"{where}'s Dataset", notes)
        except DataShapeError:
            pass
    raise DataShapeError(f"{where}'s Dataset items collate to {_describe(batch)}; expected "
                         "items that are tensors, or tuples or dicts of tensors")


def nonfinite(data: TensorData) -> str | None:
    """A description of the first tensor holding NaN or Inf, or ``None``."""
    for name, t in data.items():
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                first = [int(i) for i in bad.nonzero()[0]]
                at = f" at {tuple(first[1:])}" if len(first) > 2 else \
                    f" at {first[1]}" if len(first) == 2 else ""
                return (f"{name} holds {int(bad.sum())} NaN/Inf value(s), the first in sample "
                        f"{first[0]}{at}")
    return None
