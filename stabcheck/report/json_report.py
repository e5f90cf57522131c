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
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def render(result: AuditResult) -> str:
    """Pretty, key-sorted JSON with non-finite numbers as null."""
    payload = result.to_json()
    by_index = {p.record.index: p for p in result.diagnosis.probes}
    for probe in payload["probes"]:
        diagnosed = by_index.get(probe["index"])
        if diagnosed is not None:
            probe["layers"] = diagnosed.layers.to_json()
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
