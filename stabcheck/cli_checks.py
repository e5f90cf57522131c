"""Checks the CLI makes before any work: finite numeric options, writable outputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from stabcheck.errors import ConfigError, writing


def finite(ctx: Any, param: Any, value: float | None) -> float | None:
    """Click callback: refuse ``inf`` and ``nan`` (which ``FloatRange`` lets through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def check_outputs(outputs: tuple[tuple[str | None, Path], ...], traces: Path | None,
                  results_dir: Path | None) -> None:
    """Before any work: every ``-o`` and ``--traces`` file can be written, and none of them
    names the results directory's journal or lock file."""
    from stabcheck.journal import JOURNAL_NAME, LOCK_NAME  # not on --version's path

    protected = set()
    if results_dir is not None:
        protected = {(results_dir / name).resolve() for name in (JOURNAL_NAME, LOCK_NAME)}
    named = [(f"-o {fmt + '=' if fmt else ''}{path}", path) for fmt, path in outputs]
    named += [(f"--traces {traces}", traces)] if traces is not None else []
    for flag, path in named:
        if path.resolve() in protected:
            raise ConfigError(f"{flag}: would overwrite the audit's journal in {results_dir}; "
                              "write the report somewhere else")
        _check_writable(path, flag)


def check_optional_dependencies(traces: Path | None, png_dir: Path | None) -> None:
    """Before any work: ``--traces x.parquet`` has pyarrow and ``--png`` has matplotlib (a
    missing one is a one-line error, exit 2, not a failure after the probes have run)."""
    if traces is not None:
        from stabcheck.report.traces import check_parquet

        check_parquet(traces, f"--traces {traces}")
    if png_dir is not None:
        from stabcheck.report.png import figure_class

        figure_class(f"--png {png_dir}")


def _check_writable(path: Path, flag: str) -> None:
    with writing(path):
        if path.is_dir():
            raise ConfigError(f"{flag}: names a directory, not a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with path.open("a", encoding="utf-8"):
            pass
        if not existed:
            path.unlink()
