"""Where the CLI's results go: the human report on stderr, machine formats on stdout or
``-o`` files, traces, PNG figures and GitHub's job summary. Formatting itself lives in
:mod:`stabcheck.report`; this module only routes finished results."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from stabcheck.errors import ConfigError, UserCodeError, writing

HUMAN_FORMATS = ("rich", "text")


def all_formats() -> list[str]:
    from stabcheck.report import FORMATS

    return list(FORMATS)


def stderr_console(plain: bool | None = None) -> Any:
    from rich.console import Console

    if plain is None:
        plain = not use_rich(sys.stderr)
    if plain:
        return Console(file=sys.stderr, color_system=None, force_terminal=False, no_color=True,
                       highlight=False, emoji=False, width=110)
    # Rich asked for (--format rich) or a terminal: drawn as on a terminal even when piped.
    return Console(file=sys.stderr, highlight=False, force_terminal=True)


def human_style(fmt: str | None) -> bool:
    """Whether the stderr report is drawn with rich: ``--format rich`` forces it,
    ``--format text`` forbids it, any other format leaves it to the terminal."""
    if fmt in HUMAN_FORMATS:
        return fmt == "rich"
    return use_rich(sys.stderr)


def use_rich(stream: Any) -> bool:
    """Rich output only on a real terminal, and never with NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())



def run_predict_only(loaded: Any, fmt: str | None, outputs: tuple[tuple[str | None, Path], ...],
                  quiet: bool) -> int:
    """``audit --predict-only``: init curvature only, as JSON; exit 0, or 3 if no seed could
    be measured."""
    from stabcheck.audit import predict_only
    from stabcheck.report.predict import print_prediction, render_json

    for out_fmt, path in outputs:
        if out_fmt not in (None, "json"):
            raise ConfigError(f"-o {out_fmt}={path}: --predict-only writes JSON only")
    prediction = predict_only(loaded)
    if not quiet:
        print_prediction(prediction, stderr_console())
    text = render_json(prediction)
    for _, path in outputs:
        write_output(path, text)
    if fmt == "json" and not any(f is None for f, _ in outputs):
        click.echo(text, nl=False)
    if prediction["errors"] and len(prediction["errors"]) == len(prediction["seeds"]):
        err = prediction["errors"][0]
        raise UserCodeError(f"curvature could not be measured: {err.get('type')}: "
                            f"{err.get('message')}")
    return 0


def emit(result: Any, fmt: str | None, outputs: tuple[tuple[str | None, Path], ...],
          traces: Path | None, console: Any, quiet: bool, png_dir: Path | None = None) -> None:
    """The human report always goes to stderr (only the verdict with ``-q``); a machine
    format goes to stdout unless a plain ``-o FILE`` takes it; ``-o FORMAT=FILE`` writes any
    format to a file. With ``GITHUB_STEP_SUMMARY`` set, a Markdown summary is appended there.
    """
    from stabcheck.report import render
    from stabcheck.report.terminal import print_report, verdict_line

    if quiet:
        console.print(verdict_line(result))
    else:
        print_report(result, console)
    fmt = fmt or ("rich" if human_style(fmt) else "text")
    to_stdout = fmt not in HUMAN_FORMATS
    for out_fmt, path in outputs:
        if out_fmt is None:
            to_stdout = False
        write_output(path, render(result, out_fmt or fmt))
    if to_stdout:
        click.echo(render(result, fmt), nl=False)
    if traces is not None:
        from stabcheck.report.traces import write_traces

        write_traces(result, traces)
    if png_dir is not None:
        from stabcheck.report.png import write_pngs

        written = write_pngs(result, png_dir)
        if not quiet:
            console.print(f"plots: {', '.join(str(p) for p in written)}", highlight=False,
                          markup=False)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        append_step_summary(result, Path(summary))


def write_output(path: Path, text: str) -> None:
    from stabcheck.report.json_report import write_atomic

    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)


def append_step_summary(result: Any, path: Path) -> None:
    """Append the Markdown report to GitHub's job summary, within its 1 MiB limit."""
    from stabcheck.report.markdown import STEP_SUMMARY_LIMIT
    from stabcheck.report.markdown import render as markdown

    try:
        used = path.stat().st_size if path.exists() else 0
        room = STEP_SUMMARY_LIMIT - used - 1024
        if room < 4096:
            click.echo("note: GITHUB_STEP_SUMMARY is full; summary not appended", err=True)
            return
        with path.open("a", encoding="utf-8") as fh:
            fh.write(markdown(result, max_bytes=room) + "\n")
    except OSError as exc:
        click.echo(f"note: cannot append to GITHUB_STEP_SUMMARY ({path}): "
                   f"{exc.strerror or exc}", err=True)

