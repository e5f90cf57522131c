"""Read ``data: {path: ...}``: a CSV, Parquet, ``.npz`` or ``.npy`` file as input and target
tensors.

* ``.csv`` / ``.parquet`` (pandas; Parquet needs pyarrow): ``target`` is a column name,
  ``features`` the input columns (default: every other column). Every feature column must be
  numeric: string or categorical columns are an error that names them (encode them first).
  A string target with ``loss: cross_entropy`` is read as class labels (sorted categories →
  0, 1, …) with a note.
* ``.npz``: ``target`` and ``features`` are array keys (default features: every other key;
  several feature arrays are concatenated along their last axis).
* ``.npy``: one 2-D array; ``target`` is a column index, ``features`` column indices.

With ``loss: cross_entropy`` the target must hold whole numbers and becomes ``int64`` class
indices; with any other loss it becomes ``float32``. Features become ``float32`` (a note says
so when a NumPy file held float64). ``standardize: true`` scales each feature column to zero mean
and unit variance. Every problem is a :class:`ConfigError` located at its config line (exit 2).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stabcheck.errors import ConfigError

if TYPE_CHECKING:
    from stabcheck.config import LoadedConfig


# NaN or Inf in the data is a data problem: no learning rate, warmup or clip fixes it.
BAD_DATA = ("bad data, not a learning-rate problem: drop or fill those rows (or fix how the "
            "file is written) before auditing")


def data_path(loaded: LoadedConfig) -> Path:
    """``data.path`` resolved against the config file's directory."""
    raw = Path(str(loaded.config.data.path)).expanduser()
    return raw if raw.is_absolute() else loaded.base_dir / raw


def read_data_file(loaded: LoadedConfig) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """``(inputs, targets)`` (or ``(inputs,)`` without a target) and notes for the user."""
    spec = loaded.config.data
    path = data_path(loaded)
    if not path.is_file():
        raise loaded.error_at(("data", "path"), f"file not found: {path}")
    suffix = path.suffix.lower()
    notes: list[str] = []
    names: list[str] | None = None  # feature column names (tables); indices otherwise
    if suffix in (".csv", ".parquet"):
        x, y, names = _read_table(loaded, path, notes)
    elif suffix == ".npz":
        x, y = _read_npz(loaded, path)
    else:
        x, y = _read_npy(loaded, path)
    if x.ndim == 1:
        x = x[:, None]
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise loaded.error_at(("data", "features"), f"{path.name}: features have dtype "
                              f"{x.dtype}; expected numbers")
    if x.dtype == np.float64 and suffix in (".npz", ".npy"):  # tables are float64 by nature
        notes.append(f"{path.name}: float64 features converted to float32")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        column = repr(names[col]) if names is not None and col < len(names) else str(col)
        raise loaded.error_at(("data", "path"), f"{path.name}: {int(bad.sum())} missing or "
                              f"non-finite feature value(s), the first in row {row} (column "
                              f"{column}); {BAD_DATA}")
    if spec.standardize:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if y is None:
        return (inputs,), notes
    return (inputs, _target_tensor(loaded, y, path)), notes


def _target_tensor(loaded: LoadedConfig, y: np.ndarray, path: Path) -> torch.Tensor:
    if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
        raise loaded.error_at(("data", "target"), f"{path.name}: the target has dtype "
                              f"{y.dtype}; expected numbers")
    bad = ~np.isfinite(y.astype(np.float64))
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise loaded.error_at(("data", "target"), f"{path.name}: the target has {int(bad.sum())} "
                              f"missing or non-finite value(s), the first in row {row}; "
                              f"{BAD_DATA}")
    if loaded.config.loss == "cross_entropy":
        if y.ndim != 1:
            raise loaded.error_at(("data", "target"), f"{path.name}: cross_entropy needs one "
                                  f"class index per row; the target has shape {y.shape}")
        if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0:
            raise loaded.error_at(("data", "target"), f"{path.name}: cross_entropy needs class "
                                  "indices 0, 1, …; the target holds other values (use loss: "
                                  "mse for a regression target)")
        return torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))


def _read_table(loaded: LoadedConfig, path: Path,
                notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
        else:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise loaded.error_at(("data", "path"), "reading Parquet needs pyarrow: pip "
                                      "install 'stabcheck[parquet]'") from None
            frame = pd.read_parquet(path)
    except ConfigError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise loaded.error_at(("data", "path"), f"cannot read {path.name}: "
                              f"{type(exc).__name__}: {first[0] if first else ''}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    target, features = _target_and_features(loaded, path, "column", columns)
    text = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])
            or pd.api.types.is_bool_dtype(frame[c])]
    if text:
        raise loaded.error_at(("data", "features"), f"{path.name}: column(s) "
                              f"{', '.join(map(repr, text))} are not numeric (strings or "
                              "categories); encode them as numbers first, or leave them out of "
                              "data.features")
    y = None
    if target is not None:
        column = frame[target]
        if not pd.api.types.is_numeric_dtype(column) and loaded.config.loss == "cross_entropy":
            if column.isna().any():
                raise loaded.error_at(("data", "target"), f"{path.name}: target column "
                                      f"{target!r} has missing values")
            codes, classes = pd.factorize(column, sort=True)
            notes.append(f"{path.name}: target {target!r} read as {len(classes)} classes "
                         f"({', '.join(map(str, list(classes)[:5]))}"
                         f"{', …' if len(classes) > 5 else ''})")
            y = codes.astype(np.int64)
        elif not pd.api.types.is_numeric_dtype(column):
            raise loaded.error_at(("data", "target"), f"{path.name}: target column {target!r} "
                                  "is not numeric; a string target needs loss: cross_entropy")
        else:
            y = column.to_numpy()
    return frame[features].to_numpy(dtype=np.float64), y, features


def _missing(kind: str, name: Any, available: list[str], path: Path) -> str:
    close = difflib.get_close_matches(str(name), available, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(available[:12]) + (", …" if len(available) > 12 else "")
    return f"{path.name} has no {kind} {name!r}{hint}; it has: {shown}"


def _target_and_features(loaded: LoadedConfig, path: Path, kind: str, names: list[str]
                         ) -> tuple[str | None, list[str]]:
    """``data.target`` and ``data.features`` (default: every other name) checked against the
    file's column or array-key ``names``: a missing one is an error at its config line."""
    spec = loaded.config.data
    if spec.target is not None and str(spec.target) not in names:
        raise loaded.error_at(("data", "target"), _missing(kind, spec.target, names, path))
    target = None if spec.target is None else str(spec.target)
    features = [str(f) for f in spec.features] if spec.features is not None \
        else [n for n in names if n != target]
    for i, name in enumerate(features):
        if name not in names:
            raise loaded.error_at(("data", "features", i), _missing(kind, name, names, path))
    if not features:
        plural = "columns" if kind == "column" else "arrays"
        raise loaded.error_at(("data", "features"), f"{path.name}: no feature {plural} left")
    return target, features


def _read_npz(loaded: LoadedConfig, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise loaded.error_at(("data", "path"), f"cannot read {path.name}: "
                              f"{type(exc).__name__}: {exc}") from None
    with archive:
        target, features = _target_and_features(loaded, path, "key", list(archive.files))
        arrays = [archive[k] for k in features]
        y = archive[target] if target is not None else None
    rows = {a.shape[0] if a.ndim else -1 for a in arrays} | ({y.shape[0]} if y is not None
                                                             else set())
    if len(rows) != 1 or -1 in rows:
        raise loaded.error_at(("data", "features"), f"{path.name}: the arrays have different "
                              f"numbers of rows: {sorted(rows)}")
    x = arrays[0] if len(arrays) == 1 else np.concatenate(
        [a.reshape(a.shape[0], -1) for a in arrays], axis=1)
    return x, y


def _read_npy(loaded: LoadedConfig, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    spec = loaded.config.data
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise loaded.error_at(("data", "path"), f"cannot read {path.name}: "
                              f"{type(exc).__name__}: {exc}") from None
    if array.ndim != 2:
        raise loaded.error_at(("data", "path"), f"{path.name}: expected a 2-D array (rows x "
                              f"columns), got shape {array.shape}; use .npz for other shapes")
    n_cols = array.shape[1]
    index: dict[str, int] = {}
    for key, value in [("target", spec.target)] + [
            (f"features.{i}", f) for i, f in enumerate(spec.features or [])]:
        if value is None:
            continue
        if not isinstance(value, int) or not -n_cols <= value < n_cols:
            where = ("data", *key.split(".")) if "." not in key else \
                ("data", "features", int(key.split(".")[1]))
            raise loaded.error_at(where, f"{path.name} has {n_cols} columns: a .npy column is "
                                  f"an index 0..{n_cols - 1}, got {value!r}")
        index[key] = value % n_cols
    target = index.get("target")
    features = [index[k] for k in index if k != "target"] or \
        [c for c in range(n_cols) if c != target]
    return array[:, features], (array[:, target] if target is not None else None)
