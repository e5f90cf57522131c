"""The ``stabcheck`` command line. Parses arguments and calls the library; nothing else.

Exit codes (see :mod:`stabcheck.verdict`): 0 passed, 1 failed, 2 usage/config error,
3 not carried out, 130 interrupted. Click's own defaults are overridden so that every user
mistake is one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from stabcheck import __version__
from stabcheck.cli_checks import check_optional_dependencies, check_outputs, finite
from stabcheck.cli_output import all_formats, emit, human_style, run_predict_only, stderr_console
from stabcheck.engine import ENGINE_CHOICES
from stabcheck.errors import (
    EXIT_INTERRUPTED,
    EXIT_NOT_CARRIED_OUT,
    EXIT_USAGE,
    ConfigError,
    StabcheckError,
    user_code_exits,
    writing,
)
from stabcheck.executors import EXECUTOR_CHOICES
from stabcheck.executors.hygiene import exit_process, keep_freed_memory, user_output_to_stderr


@contextlib.contextmanager
def _imports_frozen() -> Iterator[None]:
    """Import a command's heavy modules (torch, pydantic, rich) with the cyclic garbage
    collector paused, then freeze what they created out of its reach.

    Imports allocate long-lived objects only (torch alone about 170,000), and each full
    collection walks them all: the two that fell inside stabcheck's own imports took 0.23 s,
    for nothing to collect. Frozen, they are still reference-counted and finalised as ever;
    the collector keeps working on everything made after (the user's model and data
    included). The CLI does this in its own process only, never the library API.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


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


class _OutputType(click.ParamType):
    """``-o FILE`` (the ``--format`` output) or ``-o FORMAT=FILE`` (any format)."""

    name = "[FORMAT=]FILE"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str | None, Path]:
        if isinstance(value, tuple):
            return value
        text = str(value)
        fmt, sep, file = text.partition("=")
        if sep and fmt in all_formats():
            if not file:
                self.fail(f"{text!r}: no file after '='", param, ctx)
            return fmt, Path(file)
        if sep and "/" not in fmt and "." not in fmt:
            self.fail(f"{text!r}: unknown format {fmt!r} (expected one of "
                      f"{', '.join(all_formats())})", param, ctx)
        return None, Path(text)


_OUTPUT_HELP = ("Write a report to FILE: -o FILE writes the --format output, -o FORMAT=FILE "
                "any format (repeatable: -o json=report.json -o junit=junit.xml "
                "-o markdown=summary.md).")


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
        except SystemExit as exc:  # user code's sys.exit(): never a pass (exit 0) for CI
            click.echo(f"error: user code called sys.exit({exc.code!r}); the command was not "
                       "carried out", err=True)
            code = EXIT_NOT_CARRIED_OUT
        except Exception as exc:  # a bug in stabcheck, not a user mistake
            click.echo(f"internal error: {type(exc).__name__}: {exc} (set STABCHECK_DEBUG=1 for "
                       "the traceback, and please report it)", err=True)
            if os.environ.get("STABCHECK_DEBUG"):
                import traceback

                traceback.print_exc()
            code = EXIT_NOT_CARRIED_OUT
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--format``, ``-o``, ``--traces`` and ``--png``: what ``audit`` and ``report`` write."""
    options = [
        click.option("--format", "fmt", type=click.Choice(all_formats()), default=None,
                     help="Output format: rich/text go to stderr, the others to stdout "
                     "(default: rich on a terminal, else text)."),
        click.option("-o", "--output", "outputs", type=_OutputType(), multiple=True,
                     help=_OUTPUT_HELP),
        click.option("--traces", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Export the per-step traces: FILE.csv, or FILE.parquet (needs "
                     "pyarrow)."),
        click.option("--png", "png_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, metavar="DIR", help="Also draw PNG loss/gradient-norm "
                     "curves, one per batch size, into DIR (needs matplotlib: pip install "
                     "'stabcheck[plots]')."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(cls=StabcheckGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="stabcheck")
def cli() -> None:
    """Audit the training stability of a PyTorch setup before the real run."""


@cli.command(short_help="Run the probe sweep in CONFIG and judge its stability.")
@click.argument("config", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Results directory (default: stabcheck-results/<name>-<time>).")
@click.option("--resume", "resume_dir", is_flag=False, flag_value="", default=None,
              metavar="[DIR]", help="Continue the audit in DIR (or in --out DIR), skipping "
              "the probes already in its journal.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier audit in --out.")
@_output_options
@click.option("--isolated", is_flag=True, help="Ignore [tool.stabcheck] in pyproject.toml.")
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
@click.option("--engine", type=click.Choice(ENGINE_CHOICES),
              default="auto", show_default=True,
              help="How probes run: vectorized (stacked, vmap-ed cohorts), sequential (one "
              "at a time), or auto (vectorized when the model allows, else sequential).")
@click.option("--executor", type=click.Choice(EXECUTOR_CHOICES), default="auto",
              show_default=True, help="Where probes run: in this process, or in a worker "
              "process that a hung or crashed probe cannot take down (auto: process when "
              "probe.timeout_s is set or on CUDA).")
@click.option("--workers", type=click.IntRange(min=1, max=1024), default=None,
              help="processes executor: number of worker processes (default: one per "
              "visible GPU, one on CPU); each gets cores / N threads.")
@click.option("--ray-address", default=None, metavar="auto|ray://HOST:PORT",
              help="ray executor: the cluster to join (default: a local one).")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0, max=86400), default=5.0,
              show_default=True, callback=finite, help="After a first Ctrl-C, seconds the "
              "running probes may take to finish before the partial report is written.")
@click.option("--large-sweep", is_flag=True, help="Allow a sweep of more than 10,000 probes.")
@click.option("-q", "--quiet", is_flag=True, help="Only the verdict line on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
@click.option("--predict-only", is_flag=True, help="Only measure curvature at init and print "
              "the predicted LR ceiling per batch size (seconds; no probe is trained).")
def audit(config: Path, out_dir: Path | None, resume_dir: str | None, overwrite: bool,
          fmt: str | None, outputs: tuple[tuple[str | None, Path], ...], traces: Path | None,
          png_dir: Path | None, isolated: bool, fail_on: str | None, exit_zero: bool,
          device: str | None, steps: int | None, lr: list[float] | None,
          seeds: list[int] | None, batch_size: list[int] | None, engine: str, executor: str,
          workers: int | None, ray_address: str | None, grace_s: float, large_sweep: bool,
          quiet: bool, verbose: bool,
          predict_only: bool = False) -> int:
    """Run short probe trainings over the sweep in CONFIG and judge their stability."""
    keep_freed_memory()
    with _imports_frozen():
        from stabcheck.audit import AuditOptions, run_audit
        from stabcheck.config import load_config
        from stabcheck.project import project_defaults
        from stabcheck.report.progress import PlainProgress, QuietProgress, RichProgress

    if predict_only:
        given = [flag for flag, value in (("--out", out_dir), ("--resume", resume_dir),
                                          ("--traces", traces), ("--png", png_dir))
                 if value is not None]
        if given:
            raise click.UsageError(f"--predict-only trains no probe: {given[0]} does not apply")
    if workers is not None and executor == "local":
        raise click.UsageError("--workers applies to --executor processes, not local")
    if ray_address is not None and executor not in ("auto", "ray"):
        raise click.UsageError(f"--ray-address applies to --executor ray, not {executor}")
    resume = resume_dir is not None
    if resume_dir:
        if out_dir is not None and Path(resume_dir) != out_dir:
            raise click.UsageError(f"--resume {resume_dir} and --out {out_dir} name different "
                                   "directories")
        out_dir = Path(resume_dir)
    if resume and out_dir is None:
        raise click.UsageError("--resume needs the results directory: --resume DIR")
    check_outputs(outputs, traces, out_dir)  # before the audit, not after it has run
    check_optional_dependencies(traces, png_dir)
    if png_dir is not None:
        with writing(png_dir):
            png_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {}
    for key, value in (("probe.device", device), ("probe.steps", steps),
                       ("sweep.learning_rates", lr), ("sweep.seeds", seeds),
                       ("sweep.batch_sizes", batch_size), ("fail_on", fail_on)):
        if value is not None:
            overrides[key] = value
    defaults, _ = project_defaults(config, isolated)
    loaded = load_config(config, overrides=overrides, defaults=defaults)
    if predict_only:
        return run_predict_only(loaded, fmt, outputs, quiet)
    rich_ok = human_style(fmt)
    console = stderr_console(plain=not rich_ok)
    progress = QuietProgress() if quiet else (RichProgress(console, verbose) if rich_ok
                                              else PlainProgress(console, verbose))
    options = AuditOptions(out_dir=out_dir, resume=resume, overwrite=overwrite,
                           exit_zero=exit_zero, fail_on=fail_on, progress=progress,
                           engine=engine, executor=executor, workers=workers,
                           ray_address=ray_address,
                           grace_s=grace_s,
                           large_sweep=large_sweep)
    with user_output_to_stderr():  # user code's print() must not break --format json
        result, results_dir = run_audit(loaded, options)
    emit(result, fmt, outputs, traces, console, quiet, png_dir)
    progress.finish()  # -v: the time of each phase, the report's included
    if not quiet:
        console.print(f"results: {results_dir}", highlight=False, markup=False)
    return result.exit_code


@cli.command(short_help="Check CONFIG without training (exit 0 or 2).")
@click.argument("config", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--isolated", is_flag=True, help="Ignore [tool.stabcheck] in pyproject.toml.")
def validate(config: Path, isolated: bool) -> int:
    """Check CONFIG (schema, references, data, one step at the largest batch size) without
    auditing. Exit 0, 2 (config mistake) or 3 (user code raised), as ``audit`` would."""
    from stabcheck.config import load_config
    from stabcheck.plan import plan_probes
    from stabcheck.problem import build_problem, check_largest_batch
    from stabcheck.project import project_defaults

    defaults, pyproject = project_defaults(config, isolated)
    loaded = load_config(config, defaults=defaults)
    with user_code_exits("building the model, data or loss"):
        problem = build_problem(loaded)  # the same errors and exit codes as audit
        check_largest_batch(loaded, problem)
    for note in problem.notes:
        click.echo(f"note: {note}", err=True)
    n = len(plan_probes(loaded.config))
    using = f"; defaults from {pyproject}" if pyproject else ""
    click.echo(f"{config}: ok — {n} probes of {loaded.config.probe.steps} steps, "
               f"{problem.data.n} samples, device {problem.device}{using}", err=True)
    return 0


TEMPLATES = ("starter", "hf", "tabular", "custom")


@cli.command(short_help="Write a commented starter config and its stub files.")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), default="stabcheck.yaml")
@click.option("--from-template", "template", type=click.Choice(TEMPLATES), default="starter",
              show_default=True, help="starter: built-in model and data; hf: a Hugging Face "
              "model from its config; tabular: a CSV file (an example train.csv is written "
              "beside the config); custom: your own model.py and data.py (stubs written "
              "beside the config).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def init(path: Path, template: str, force: bool) -> int:
    """Write a commented config to PATH (default: stabcheck.yaml), and its stub files."""
    from importlib import resources

    root = resources.files("stabcheck").joinpath("templates")
    if template == "starter":
        files = {path: root.joinpath("starter.yaml")}
    else:
        folder = root.joinpath(template)
        files = {path if entry.name == "stabcheck.yaml" else path.parent / entry.name: entry
                 for entry in sorted(folder.iterdir(), key=lambda e: e.name)
                 if entry.is_file() and not entry.name.startswith((".", "__"))}
    existing = [str(p) for p in files if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]}: already exists (use --force to overwrite)")
    for target, source in files.items():
        with writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    names = ", ".join(str(p) for p in files)
    click.echo(f"wrote {names}; run: stabcheck audit {path}", err=True)
    return 0


@cli.command(short_help="Explain a finding code such as SC101, or list them all.")
@click.argument("code", required=False)
@click.option("--markdown", "page", type=click.Choice(["findings", "thresholds"]),
              help="Print the docs/findings.md or docs/thresholds.md reference page instead.")
def explain(code: str | None, page: str | None) -> int:
    """Explain a finding CODE (e.g. SC101), or list every code."""
    from stabcheck.explain import MARKDOWN_PAGES, describe_code, list_codes

    if page and code:
        raise ConfigError("give a finding CODE or --markdown PAGE, not both")
    text = MARKDOWN_PAGES[page]() if page else describe_code(code) if code else list_codes()
    click.echo(text, nl=not page)  # a page ends with its own newline
    return 0


@cli.command(short_help="Re-render the report of an audit without re-training.")
@click.argument("results_dir", type=click.Path(file_okay=False, path_type=Path))
@_output_options
@click.option("--fail-on", type=click.Choice(["error", "warning", "never"]), default=None,
              help="Lowest severity that fails the audit (overrides the one it ran with).")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when findings fail the audit.")
@click.option("-q", "--quiet", is_flag=True, help="Only the verdict line on stderr.")
def report(results_dir: Path, fmt: str | None, outputs: tuple[tuple[str | None, Path], ...],
           traces: Path | None, png_dir: Path | None, fail_on: str | None, exit_zero: bool,
           quiet: bool) -> int:
    """Re-render the report of a finished or partial audit, without re-training."""
    from stabcheck.journal import read_journal
    from stabcheck.result import build_result

    check_outputs(outputs, traces, results_dir)
    check_optional_dependencies(traces, png_dir)
    result = build_result(read_journal(results_dir), exit_zero=exit_zero, fail_on=fail_on)
    emit(result, fmt, outputs, traces, stderr_console(plain=not human_style(fmt)), quiet,
         png_dir)
    return result.exit_code


@cli.command(short_help="Fail (exit 1) when NEW regressed against BASELINE.")
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--lr-drop-tolerance", type=click.FloatRange(0, 1), default=0.0,
              show_default=True, callback=finite, help="Relative drop of a max stable LR that is "
              "tolerated.")
@click.option("--lr-sensitivity-tolerance", type=click.FloatRange(min=0), default=0.05,
              show_default=True, callback=finite, help="Rise of the normalised LR sensitivity "
              "that is tolerated.")
def compare(baseline: Path, new: Path, lr_drop_tolerance: float,
            lr_sensitivity_tolerance: float) -> int:
    """Fail (exit 1) when NEW regressed against BASELINE.

    Each is a report.json or a results directory. A regression is: a max stable LR that
    dropped, a new error finding, a healthy cell that now fails, or a worse LR sensitivity.
    """
    from stabcheck.compare import Tolerances, load_report
    from stabcheck.compare import compare as run_compare

    result = run_compare(load_report(baseline), load_report(new),
                         Tolerances(lr_drop=lr_drop_tolerance,
                                    lr_sensitivity=lr_sensitivity_tolerance))
    click.echo(result.render(), nl=False)
    return result.exit_code


def main() -> None:
    """Console-script entry point: the process ends with the exit status even if user code
    left a thread running, and without the interpreter's teardown (see
    :func:`~stabcheck.executors.hygiene.exit_process`)."""
    exit_process(cli.main(prog_name="stabcheck", standalone_mode=False))


if __name__ == "__main__":
    main()
