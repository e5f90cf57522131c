"""The ``stabcheck`` command line. Parses arguments and calls the library; nothing else.

Exit codes (see :mod:`stabcheck.verdict`): 0 passed, 1 failed, 2 usage/config error,
3 not carried out, 130 interrupted. Click's own defaults are overridden so that every user
mistake is one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import Any

import click

from stabcheck import __version__
from stabcheck.errors import (
    EXIT_INTERRUPTED,
    EXIT_NOT_CARRIED_OUT,
    EXIT_USAGE,
    ConfigError,
    StabcheckError,
    UserCodeError,
)

HUMAN_FORMATS = ("rich", "text")
MACHINE_FORMATS = ("json", "html")


def _stderr_console(plain: bool | None = None) -> Any:
    from rich.console import Console

    if plain is None:
        plain = not use_rich(sys.stderr)
    if plain:
        return Console(file=sys.stderr, color_system=None, force_terminal=False, no_color=True,
                       highlight=False, emoji=False, width=110)
    return Console(file=sys.stderr, highlight=False)


def use_rich(stream: Any) -> bool:
    """Rich output only on a real terminal, and never with NO_COLOR or TERM=dumb."""
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class _ListType(click.ParamType):
    """A comma-separated list: ``0.001,0.01`` or ``0,1,2``."""

    def __init__(self, item: type, positive: bool) -> None:
        self.item, self.positive = item, positive
        self.name = f"{item.__name__}[,{item.__name__}…]"

    def convert(self, value: Any, param: Any, ctx: Any) -> list[Any]:
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            try:
                item = self.item(part.strip())
            except ValueError:
                self.fail(f"{part.strip()!r} is not a valid {self.item.__name__}", param, ctx)
            if self.positive and not item > 0:
                self.fail(f"{part.strip()} must be positive", param, ctx)
            out.append(item)
        if not out:
            self.fail("needs at least one value", param, ctx)
        return out


class StabcheckGroup(click.Group):
    """A click group whose ``main`` maps every failure to stabcheck's exit codes."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name or "stabcheck",
                              complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.ClickException as exc:  # usage errors: bad option, missing argument
            exc.show(file=sys.stderr)
            code = EXIT_USAGE
        except click.exceptions.Abort:
            click.echo("interrupted", err=True)
            code = EXIT_INTERRUPTED
        except StabcheckError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            code = exc.exit_code
        except Exception as exc:  # a bug in stabcheck, not a user mistake
            click.echo(f"internal error: {type(exc).__name__}: {exc} (set STABCHECK_DEBUG=1 for "
                       "the traceback, and please report it)", err=True)
            if os.environ.get("STABCHECK_DEBUG"):
                traceback.print_exc()
            code = EXIT_NOT_CARRIED_OUT
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=StabcheckGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="stabcheck")
def cli() -> None:
    """Audit the training stability of a PyTorch setup before the real run."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Results directory (default: stabcheck-results/<name>-<time>).")
@click.option("--resume", is_flag=True, help="Continue the audit in --out, skipping finished "
              "probes.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier audit in --out.")
@click.option("--format", "fmt", type=click.Choice(HUMAN_FORMATS + MACHINE_FORMATS),
              default=None, help="Output format (default: rich on a terminal, else text).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the --format output to this file instead of stdout.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "never"]), default=None,
              help="Lowest severity that fails the audit (overrides the config).")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings fail the audit.")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N (overrides config).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Steps per probe.")
@click.option("--lr", type=_ListType(float, True), default=None,
              help="Learning rates, comma-separated (overrides sweep.learning_rates).")
@click.option("--seeds", type=_ListType(int, False), default=None,
              help="Seeds, comma-separated (overrides sweep.seeds).")
@click.option("--batch-size", type=_ListType(int, True), default=None,
              help="Batch sizes, comma-separated (overrides sweep.batch_sizes).")
@click.option("-q", "--quiet", is_flag=True, help="Only the verdict line on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
def audit(config: Path, out_dir: Path | None, resume: bool, overwrite: bool, fmt: str | None,
          output: Path | None, fail_on: str | None, exit_zero: bool, device: str | None,
          steps: int | None, lr: list[float] | None, seeds: list[int] | None,
          batch_size: list[int] | None, quiet: bool, verbose: bool) -> int:
    """Run short probe trainings over the sweep in CONFIG and judge their stability."""
    from stabcheck.audit import AuditOptions, run_audit
    from stabcheck.config import load_config
    from stabcheck.report.progress import PlainProgress, QuietProgress, RichProgress

    if resume and out_dir is None:
        raise click.UsageError("--resume needs --out DIR (the audit to continue)")
    overrides: dict[str, Any] = {}
    for key, value in (("probe.device", device), ("probe.steps", steps),
                       ("sweep.learning_rates", lr), ("sweep.seeds", seeds),
                       ("sweep.batch_sizes", batch_size), ("fail_on", fail_on)):
        if value is not None:
            overrides[key] = value
    loaded = load_config(config, overrides=overrides)
    rich_ok = use_rich(sys.stderr)
    console = _stderr_console(plain=not rich_ok)
    progress = QuietProgress() if quiet else (RichProgress(console) if rich_ok
                                              else PlainProgress(console, verbose))
    options = AuditOptions(out_dir=out_dir, resume=resume, overwrite=overwrite,
                           exit_zero=exit_zero, fail_on=fail_on, progress=progress)
    result, results_dir = run_audit(loaded, options)
    _emit(result, fmt, output, console, quiet)
    if not quiet:
        console.print(f"results: {results_dir}", highlight=False, markup=False)
    return result.exit_code


def _emit(result: Any, fmt: str | None, output: Path | None, console: Any, quiet: bool) -> None:
    """The human report always goes to stderr (only the verdict with ``-q``); a machine
    format goes to stdout, and any format to ``-o FILE``."""
    from stabcheck.report import render
    from stabcheck.report.terminal import print_report, verdict_line

    if quiet:
        console.print(verdict_line(result))
    else:
        print_report(result, console)
    fmt = fmt or ("rich" if use_rich(sys.stderr) else "text")
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(render(result, fmt), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{output}: cannot write: {exc.strerror or exc}") from None
    elif fmt in MACHINE_FORMATS:
        click.echo(render(result, fmt), nl=False)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=True, path_type=Path))
def validate(config: Path) -> int:
    """Check CONFIG (schema, references, data shapes) without training. Exit 0 or 2."""
    from stabcheck.config import load_config
    from stabcheck.plan import plan_probes
    from stabcheck.problem import build_problem

    loaded = load_config(config)
    try:
        problem = build_problem(loaded)
    except UserCodeError as exc:  # validate's contract is 0 or 2
        raise ConfigError(f"{config}: {exc}") from None
    n = len(plan_probes(loaded.config))
    click.echo(f"{config}: ok — {n} probes of {loaded.config.probe.steps} steps, "
               f"{problem.data.n} samples, device {problem.device}", err=True)
    return 0


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="stabcheck.yaml")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> int:
    """Write a commented starter config to PATH (default: stabcheck.yaml)."""
    if path.exists() and not force:
        raise ConfigError(f"{path}: already exists (use --force to overwrite)")
    text = resources.files("stabcheck").joinpath("templates/starter.yaml").read_text("utf-8")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}; run: stabcheck audit {path}", err=True)
    return 0


@cli.command()
@click.argument("code", required=False)
def explain(code: str | None) -> int:
    """Explain a finding CODE (e.g. SC101), or list every code."""
    from stabcheck.explain import describe_code, list_codes

    click.echo(describe_code(code) if code else list_codes())
    return 0


@cli.command()
@click.argument("results_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(HUMAN_FORMATS + MACHINE_FORMATS),
              default=None, help="Output format (default: rich on a terminal, else text).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the output to this file instead of stdout.")
@click.option("--fail-on", type=click.Choice(["error", "warning", "never"]), default=None)
@click.option("--exit-zero", is_flag=True)
def report(results_dir: Path, fmt: str | None, output: Path | None, fail_on: str | None,
           exit_zero: bool) -> int:
    """Re-render the report of a finished or partial audit, without re-training."""
    from stabcheck.journal import read_journal
    from stabcheck.result import build_result

    result = build_result(read_journal(results_dir), exit_zero=exit_zero, fail_on=fail_on)
    _emit(result, fmt, output, _stderr_console(), quiet=False)
    return result.exit_code


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="stabcheck")


if __name__ == "__main__":
    main()
