"""The JSON report: the stable machine surface (``schema_version`` 1, see docs/json-report.md).

Each probe carries ``layers``: its per-layer gradient norms summarised over the steps it ran
(``names`` in depth order, and ``grad_norm`` ``min``/``median``/``max`` lists aligned with
them; ``null`` where a layer never had a finite norm), so flow through depth can be plotted
without reading ``probes.jsonl``. ``--traces`` exports the per-step values.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.records import ProbeRecord, significant

if TYPE_CHECKING:
    from stabcheck.result import AuditResult


def _finite(value: Any) -> Any:
    # JSON has no NaN or Infinity: a non-finite number is reported as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def layer_summary(record: ProbeRecord) -> dict[str, Any]:
    """``{"names": [...], "grad_norm": {"min": [...], "median": [...], "max": [...]}}``."""
    matrix = record.layer_matrix()
    out: dict[str, list[float | None]] = {"min": [], "median": [], "max": []}
    for j in range(len(record.layer_names)):
        column = matrix[:, j] if matrix.shape[0] and j < matrix.shape[1] else np.array([])
        finite = column[np.isfinite(column)]
        for key, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[key].append(significant(float(fn(finite))) if finite.size else None)
    return {"names": list(record.layer_names), "grad_norm": out}


def render(result: AuditResult) -> str:
    """Pretty, key-sorted JSON with non-finite numbers as null."""
    payload = result.to_json()
    by_index = {p.record.index: p.record for p in result.diagnosis.probes}
    for probe in payload["probes"]:
        record = by_index.get(probe["index"])
        if record is not None:
            probe["layers"] = layer_summary(record)
    return json.dumps(_finite(payload), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a crash) never sees half of it.

    The text goes to a temporary file in the same directory, is fsynced, and replaces
    ``path`` by ``os.replace`` (atomic on POSIX); the directory is fsynced after.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
