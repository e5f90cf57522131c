"""The human report: a grid of LR x batch size, findings by severity, recommendations.

One layout serves both terminal formats: ``rich`` prints it in colour to a terminal, ``text``
renders the same thing without colour or animation (CI logs, ``NO_COLOR``, pipes).
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from stabcheck.findings import Finding
from stabcheck.report import plotdata

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis
    from stabcheck.result import AuditResult

SYMBOLS = {"healthy": ("✓", "green"), "unstable": ("!", "yellow"), "diverged": ("✗", "red"),
           "error": ("E", "magenta"), "timeout": ("T", "magenta"), "oom": ("M", "magenta")}
STATUS_WORDS = {"healthy": "healthy", "unstable": "unstable", "diverged": "diverged",
                "error": "error", "timeout": "timeout", "oom": "out of memory"}
GRID_TITLE = "Probe grid: status per seed, median final loss, loss curve"
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SPARK = "▁▂▃▄▅▆▇█"
MAX_PER_CODE = 3


def sparkline(values: np.ndarray, width: int = 12) -> str:
    """A unicode sparkline of a (log-scaled) loss curve; ``×`` marks where it went non-finite."""
    if values.size == 0:
        return ""
    buckets = np.array_split(values, min(width, values.size))
    points = [float(np.nanmean(b)) if np.isfinite(b).any() else np.nan for b in buckets]
    finite = [p for p in points if np.isfinite(p) and p > 0]
    if not finite:
        return "×" * len(points)
    lo, hi = np.log10(min(finite)), np.log10(max(finite))
    span = hi - lo or 1.0
    out = []
    for p in points:
        if not np.isfinite(p):
            out.append("×")
        elif p <= 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int((np.log10(p) - lo) / span * len(SPARK)))])
    return "".join(out)


def _cell_curve(members: list[ProbeDiagnosis]) -> np.ndarray:
    # The median curve across seeds, padded with NaN where a seed stopped early.
    series = [m.record.series("loss") for m in members]
    length = max((s.size for s in series), default=0)
    if length == 0:
        return np.zeros(0)
    stacked = np.full((len(series), length), np.nan)
    for i, s in enumerate(series):
        stacked[i, : s.size] = s
    with np.errstate(all="ignore"):
        finite_any = np.isfinite(stacked).any(axis=0)
        out = np.full(length, np.nan)
        out[finite_any] = np.nanmedian(stacked[:, finite_any], axis=0)
    return out


class _Grid:
    """The probe grid, its learning rates split into blocks that fit the console's width.

    Each block repeats the batch-size column, so at 80 columns (or 110 in a CI log) with many
    learning rates every cell keeps its status symbols, its loss and its curve uncut, and a
    legend of the status symbols closes the grid.
    """

    def __init__(self, result: AuditResult) -> None:
        self.sizes, self.lrs, cells = plotdata.grid(result)
        # each cell drawn once: the block layout measures several candidate tables
        self.cells = {(bs, lr): _cell(cells.get((bs, lr), [])) for bs in self.sizes
                      for lr in self.lrs}

    def table(self, lrs: list[float], title: str | None) -> Table:
        """One block: the batch-size column and the columns of ``lrs``."""
        table = Table(title=title, title_justify="left", show_lines=True)
        table.add_column("batch \\ lr", justify="right", style="bold", no_wrap=True)
        for lr in lrs:
            table.add_column(f"{lr:g}", justify="left", no_wrap=True)
        for bs in self.sizes:
            table.add_row(str(bs), *(self.cells[(bs, lr)] for lr in lrs))
        return table

    def blocks(self, console: Console, options: ConsoleOptions) -> list[list[float]]:
        """The learning rates in consecutive blocks that each fit the width, as few blocks as
        that allows and of even sizes (9 LRs at 80 columns: 3 + 3 + 3, not 4 + 4 + 1)."""
        natural = options.update_width(10_000)  # a table measures no wider than it may be

        def fits(lrs: list[float]) -> bool:
            width = Measurement.get(console, natural, self.table(lrs, None)).maximum
            return len(lrs) == 1 or width <= options.max_width

        def split(cap: int) -> list[list[float]]:
            out, rest = [], list(self.lrs)
            while rest:
                take = min(cap, len(rest))
                while not fits(rest[:take]):
                    take -= 1
                out.append(rest[:take])
                rest = rest[take:]
            return out

        greedy = split(len(self.lrs))
        even = split(-(-len(self.lrs) // len(greedy)))
        return even if len(even) == len(greedy) else greedy

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        blocks = self.blocks(console, options)
        for i, lrs in enumerate(blocks):
            yield self.table(lrs, GRID_TITLE if i == 0 else
                             f"Probe grid, continued ({i + 1} of {len(blocks)})")
        yield legend()


def legend() -> Text:
    """The status symbols (one per seed in each cell) and what a cell's curve shows."""
    text = Text("", style="dim")
    for i, (status, (symbol, style)) in enumerate(SYMBOLS.items()):
        text.append(("  " if i else "") + symbol, style=style)
        text.append(f" {STATUS_WORDS[status]}")
    text.append("\n– no probe; curve: median loss over seeds, log scale, × non-finite")
    return text


def _cell(members: list[ProbeDiagnosis]) -> Text:
    if not members:
        return Text("–", style="dim")
    text = Text()
    for m in members:
        symbol, style = SYMBOLS.get(m.status, ("?", "white"))
        text.append(symbol, style=style)
    median = plotdata.median_final_loss(members)
    text.append(f" {median:.3g}" if median is not None else " –")
    text.append("\n" + sparkline(_cell_curve(members)), style="dim")
    return text


def _findings(findings: list[Finding]) -> RenderableType:
    if not findings:
        return Text("No findings.", style="green")
    by_code: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_code[f.code].append(f)
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("severity")
    table.add_column("code")
    table.add_column("finding", overflow="fold")
    for code, group in by_code.items():
        first = group[0]
        lines = Text(first.title, style="bold")
        for f in group[:MAX_PER_CODE]:
            lines.append(f"\n  {f.message}")
            if f.evidence:
                lines.append(f"  [{f.evidence}]", style="dim")
        if len(group) > MAX_PER_CODE:
            lines.append(f"\n  … and {len(group) - MAX_PER_CODE} more", style="dim")
        lines.append(f"\n  → {first.recommendation}", style="italic")
        table.add_row(Text(first.severity.value.upper(), style=SEVERITY_STYLE[first.severity]),
                      code, lines)
    return table


def _recommendations(result: AuditResult) -> RenderableType:
    summary = result.diagnosis.summary
    lines = Text()
    for rec in summary.recommendations:
        lines.append(f"• {rec.text}\n")
    missing = summary.no_stable_lr
    if missing:
        lines.append(f"• no stable LR in the grid at bs={', '.join(missing)}: sweep lower "
                     "learning rates\n")
    return lines if lines.plain else Text("No recommendations.", style="dim")


def _sensitivity(result: AuditResult) -> RenderableType:
    """One line each: stability margin, LR / seed / batch-size sensitivity."""
    summary = result.diagnosis.summary
    lines = Text()
    margin = summary.stability_margin
    if margin and margin.margin is not None:
        edge = margin.max_stable_lr
        lines.append(f"• stability margin: {margin.margin:.2f}x (max stable LR "
                     f"{edge if edge is not None else 'none'} / target_lr "
                     f"{margin.target_lr:g} at bs={margin.batch_size})\n")
    sens = summary.lr_sensitivity
    if sens:
        parts = [f"bs={bs}: {_g(v.lr_sensitivity, '.3g')} ({_g(v.normalised, '.0%')} of the "
                 "init-to-best gap)" for bs, v in sens.items()]
        lines.append("• LR sensitivity (Wortsman et al. 2023): " + "; ".join(parts) + "\n")
    spread = summary.max_seed_spread
    fragile = summary.fragile_cells
    if spread is not None or fragile:
        text = f"• seed sensitivity: largest spread {spread:.0%} of the decrease" \
            if spread is not None else "• seed sensitivity:"
        if fragile:
            text += "; fragile cells " + ", ".join(f"lr={c.lr:g}/bs={c.batch_size}"
                                                   for c in fragile)
        lines.append(text + "\n")
    init = summary.init
    losses = [v for v in (init.initial_loss if init else {}).values() if v is not None]
    if init and losses:
        expected = init.expected_initial_loss
        versus = f" vs ln(classes) = {expected:.3g}" if expected else ""
        flow = list(summary.gradient_flow_at_init.values())
        ratio = f"; first/last layer RMS gradient {min(flow):.2g}" if flow else ""
        lines.append(f"• at init: loss {min(losses):.3g}-{max(losses):.3g}{versus}{ratio}\n")
    exponent = summary.batch_size_exponent
    if exponent is not None:
        lines.append(f"• batch-size sensitivity: max stable LR ∝ bs^{exponent:.2g} (1 = linear "
                     "scaling rule, 0.5 = square-root rule)\n")
    return lines


def _g(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _curvature(result: AuditResult) -> RenderableType | None:
    """Predicted LR ceiling (from init sharpness) beside the observed boundary, per batch."""
    curv = result.diagnosis.summary.curvature
    if curv is None or not curv.by_batch_size:
        return None
    table = Table(title="Curvature: LR ceiling predicted from init sharpness vs observed",
                  title_justify="left", box=None, pad_edge=False)
    for name in ("batch", "precond. sharpness" if curv.adaptive else "init sharpness (max)",
                 "predicted ceiling", "max stable LR", "first diverged LR", "max EoS ratio"):
        table.add_column(name, justify="right")
    for bs, e in curv.by_batch_size.items():
        sharp = e.init_preconditioned_sharpness if curv.adaptive else e.init_sharpness
        table.add_row(bs, *(_g(v, ".4g") for v in (
            sharp, e.predicted_lr_ceiling, e.observed_max_stable_lr,
            e.observed_min_diverged_lr, e.max_eos_ratio)))
    notes = Text(f"stable while sharpness < {curv.limit}", style="dim")
    if curv.b_simple is not None:
        notes.append(f"; gradient noise scale B_simple ≈ {curv.b_simple:.4g} "
                     "(critical batch-size hint)", style="dim")
    return Group(table, notes)


def verdict_line(result: AuditResult) -> Text:
    """``Verdict: PASSED — reason (exit 0)``."""
    v = result.verdict
    style = {"passed": "bold green", "failed": "bold red"}.get(v.verdict, "bold magenta")
    label = "INCOMPLETE" if v.verdict == "incomplete" else v.verdict.upper().replace("_", " ")
    return Text.assemble(("Verdict: ", "bold"), (label, style),
                         f" — {v.reason} (exit {v.exit_code})")


def renderables(result: AuditResult) -> list[RenderableType]:
    """The report as rich renderables, top to bottom."""
    env = result.environment
    counts = result.diagnosis.summary.by_status
    status_line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    head = Text.assemble(
        ("stabcheck ", "bold"), (f"· {result.name} · ", ""),
        (f"{len(result.diagnosis.probes)}/{result.planned} probes", "bold"),
        f" ({status_line}) · {env.get('device', '?')}",
        f" · {result.timings['wall_time_s']:.1f}s" if "wall_time_s" in result.timings else "")
    out: list[RenderableType] = [head]
    if result.diagnosis.probes:
        out.append(_Grid(result))
    curvature = _curvature(result)
    if curvature is not None:
        out.append(curvature)
    out += [Rule("Findings", align="left"), _findings(result.diagnosis.findings),
            Rule("Recommendations", align="left"), _recommendations(result)]
    sensitivity = _sensitivity(result)
    if isinstance(sensitivity, Text) and sensitivity.plain:
        out += [Rule("Sweep and init", align="left"), sensitivity]
    for note in result.notes:
        out.append(Text(f"note: {note}", style="dim"))
    out.append(verdict_line(result))
    return out


def print_report(result: AuditResult, console: Console) -> None:
    """Print the report to ``console`` (colour if the console has it)."""
    console.print(Group(*renderables(result)))


def render(result: AuditResult, width: int = 110) -> str:
    """The report as plain text."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      no_color=True, emoji=False, highlight=False)
    print_report(result, console)
    return buffer.getvalue()
