"""Per-step traces as a table (CSV, or Parquet through pandas + pyarrow)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stabcheck.errors import ConfigError, writing

if TYPE_CHECKING:
    import pandas as pd

    from stabcheck.result import AuditResult


def traces_frame(result: AuditResult) -> pd.DataFrame:
    """One row per (probe, step): the probe's grid point and status, then every statistic.

    The trace's own per-step learning rate (after warmup) is the ``step_lr`` column; ``lr``
    is the probe's grid learning rate.
    """
    import pandas as pd

    frames = []
    for p in result.diagnosis.probes:
        r = p.record
        frame = pd.DataFrame({("step_lr" if name == "lr" else name): r.series(name)
                              for name in r.trace})
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
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise ConfigError(f"{path}: Parquet needs pyarrow: pip install "
                                  "'stabcheck[parquet]'") from None
            table.to_parquet(path, index=False)
        else:
            table.to_csv(path, index=False)
