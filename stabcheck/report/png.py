"""Optional PNG plots through matplotlib (``pip install 'stabcheck[plots]'``).

One figure per batch size: a column per learning rate, the loss on top and the gradient norm
(before clipping) below, every seed overlaid on a log scale, loss and gradient-norm spikes
ringed where findings name them, a cross where a probe went non-finite and the clip threshold
drawn. matplotlib is imported only when this runs, and only its object-oriented API is used
(no pyplot, no global backend switch), so nothing changes for a caller that also plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.errors import ConfigError, writing
from stabcheck.report import plotdata
from stabcheck.report.svg import PALETTE

if TYPE_CHECKING:
    from stabcheck.result import AuditResult

MISSING = "PNG plots need matplotlib: pip install 'stabcheck[plots]'"


def figure_class(flag: str = "") -> Any:
    """matplotlib's Figure, or a one-line ConfigError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"{flag}: {MISSING}" if flag else MISSING) from None
    return Figure


def write_pngs(result: AuditResult, directory: Path) -> list[Path]:
    """Write ``curves-bs{N}.png`` for every batch size into ``directory``; return the paths."""
    make_figure = figure_class()
    sizes, lrs, cells = plotdata.grid(result)
    seeds = plotdata.seeds(result)
    colours = {seed: PALETTE[i % len(PALETTE)] for i, seed in enumerate(seeds)}
    clip = plotdata.grad_clip(result)
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for bs in sizes:
        columns = [lr for lr in lrs if (bs, lr) in cells]
        fig = make_figure(figsize=(3.6 * len(columns), 6.2), layout="constrained")
        axes = fig.subplots(2, len(columns), squeeze=False)
        for j, lr in enumerate(columns):
            members = cells[(bs, lr)]
            for row, column in enumerate(("loss", "grad_norm")):
                ax = axes[row][j]
                _draw(ax, members, column, colours)
                ax.set_xlim(0, plotdata.steps_planned(members))
                ax.set_xlabel("step")
                if column == "grad_norm" and clip is not None:
                    ax.axhline(clip, color="#b22222", linestyle="--", linewidth=1,
                               label=f"grad_clip {clip:g}")
                title = "loss" if column == "loss" else "grad norm (before clipping)"
                ax.set_title(f"{title} · lr={lr:g}", fontsize=10)
                ax.grid(True, which="major", alpha=0.3)
            axes[0][j].legend(fontsize=8)
        fig.suptitle(f"{result.name}: batch size {bs}")
        path = directory / f"curves-bs{bs}.png"
        with writing(path):
            fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _draw(ax: Any, members: list[Any], column: str, colours: dict[int, str]) -> None:
    positive = True
    for m in members:
        t = plotdata.trace(m, column)
        colour = colours[m.record.seed]
        ax.plot(t.steps, t.values, color=colour, linewidth=1.2, label=f"seed {t.seed}")
        finite = t.values[np.isfinite(t.values)]
        positive = positive and bool((finite > 0).all())
        lookup = dict(zip(t.steps.tolist(), t.values.tolist(), strict=True))
        marks = [(s, lookup[s]) for s in t.marks if s in lookup and np.isfinite(lookup[s])]
        if marks:
            ax.scatter([s for s, _ in marks], [v for _, v in marks], s=40,
                       facecolors="none", edgecolors=colour, linewidths=1.5, zorder=3)
        if t.end is not None:
            ax.plot([t.end], [1.0], marker="x", color=colour, markersize=8, mew=2,
                    transform=ax.get_xaxis_transform(), clip_on=False)
    if positive:
        ax.set_yscale("log")
