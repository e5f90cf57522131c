"""Per-step traces as a table (CSV, or Parquet through pandas + pyarrow).

Besides the global statistics, each layer's gradient norm is a column
``layer_grad_norm:<layer name>`` (layers in depth order, as the JSON report's
``probes[].layers.names``), so flow through depth can be plotted from the table alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stabcheck.errors import ConfigError, writing

if TYPE_CHECKING:
    import pandas as pd

    from stabcheck.result import AuditResult


LAYER_PREFIX = "layer_grad_norm:"


def check_parquet(path: Path, flag: str = "") -> None:
    """A ``.parquet`` traces file needs pyarrow: a one-line ConfigError saying how to get it."""
    if path.suffix != ".parquet":
        return
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(f"{flag or path}: Parquet needs pyarrow: pip install "
                          "'stabcheck[parquet]'") from None


def traces_frame(result: AuditResult) -> pd.DataFrame:
    """One row per (probe, step): the probe's grid point and status, then every statistic.

    The trace's own per-step learning rate (after warmup) is the ``step_lr`` column; ``lr``
    is the probe's grid learning rate; ``layer_grad_norm:<name>`` columns hold the per-layer
    gradient norms (empty where a probe has no such layer).
    """
    import pandas as pd

    frames = []
    for p in result.diagnosis.probes:
        r = p.record
        frame = pd.DataFrame({("step_lr" if name == "lr" else name): r.series(name)
                              for name in r.trace})
        layers = r.layer_matrix()
        if layers.shape[0] == len(frame) and layers.shape[1] == len(r.layer_names):
            for j, name in enumerate(r.layer_names):
                frame[f"{LAYER_PREFIX}{name}"] = layers[:, j]
        frame.insert(0, "step", range(len(frame)))
        for col, value in (("status", p.status), ("batch_size", r.batch_size),
                           ("seed", r.seed), ("lr", r.lr), ("probe", r.index)):
            frame.insert(0, col, value)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["probe", "lr", "seed", "batch_size", "status", "step"])
    return pd.concat(frames, ignore_index=True)


def write_traces(result: AuditResult, path: Path) -> None:
    """Write the traces to ``path``: ``.parquet`` as Parquet, anything else as CSV."""
    table = traces_frame(result)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            check_parquet(path)
            table.to_parquet(path, index=False)
        else:
            table.to_csv(path, index=False)
