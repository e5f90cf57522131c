"""The probe grid at 80 columns and in a CI log: with many learning rates it wraps into blocks
that each keep the batch-size column, and no cell's status symbols or loss is cut."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console

from stabcheck.journal import JournalContents
from stabcheck.report import plotdata
from stabcheck.report.terminal import legend, print_report
from stabcheck.result import AuditResult, build_result
from tests.conftest import TINY, deep_update
from tests.diagnose.helpers import decreasing, record

SIZES = (32, 1024)
SEEDS = (0, 1, 2)


def grid_result(lrs: list[float]) -> tuple[AuditResult, dict[tuple[int, float], str]]:
    """A synthetic audit over ``lrs`` x SEEDS x SIZES whose largest LR diverges (a huge loss,
    then NaN). Returns the result and each cell's text: a status symbol per seed, then the
    median final loss the report states for it."""
    records, index = [], 0
    for bs in SIZES:
        for j, lr in enumerate(lrs):
            for seed in SEEDS:
                # each cell its own loss, some of them long to print (0.000123)
                scale = (1 + j) * 10.0 ** -(j % 4) * (1.0 if bs == 32 else 1.37)
                loss = scale * decreasing(60, seed=index, noise=0.01)
                kwargs: dict = {}
                if lr == lrs[-1]:
                    loss = np.r_[loss[:30], [7.7e29 * (1 + seed) * (1 + bs)], [np.nan]]
                    kwargs = {"outcome": "nonfinite", "first_nonfinite_step": 31}
                r = record(loss, lr=lr, seed=seed, batch_size=bs, index=index, **kwargs)
                if kwargs:
                    r.nonfinite_what, r.nonfinite_kind = "loss", "NaN"
                records.append(r)
                index += 1
    config = deep_update(TINY, {"name": "wide", "sweep": {
        "learning_rates": lrs, "seeds": list(SEEDS), "batch_sizes": list(SIZES)},
        "probe": {"steps": 60, "grad_clip": None}})
    header = {"config": config, "planned": len(records), "environment": {"device": "cpu"}}
    result = build_result(JournalContents(header=header, probes={r.key: r for r in records}))
    _, _, cells = plotdata.grid(result)
    expected = {}
    for (bs, lr), members in cells.items():
        assert len(members) == len(SEEDS)
        symbols = ("✗" if lr == lrs[-1] else "✓") * len(SEEDS)
        expected[(bs, lr)] = f"{symbols} {plotdata.median_final_loss(members):.3g}"
    assert len(set(expected.values())) == len(expected)  # each cell's text is its own
    return result, expected


def rendered(result: AuditResult, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None,
                      force_terminal=False)
    print_report(result, console)
    return console.export_text()


@pytest.mark.parametrize(("n_lrs", "width"), [(5, 80), (9, 80), (9, 110)])
def test_every_cell_stays_whole_and_the_batch_column_stays(n_lrs: int, width: int) -> None:
    lrs = [float(v) for v in np.geomspace(1e-4, 1.0, n_lrs).round(6)]
    result, expected = grid_result(lrs)
    text = rendered(result, width)
    grid = text.split("Findings")[0]
    assert max(len(line) for line in grid.splitlines()) <= width
    for (bs, lr), cell in expected.items():
        rows = [line for line in grid.splitlines() if cell in line]
        assert rows, f"cell bs={bs} lr={lr:g} ({cell!r}) is cut or missing:\n{grid}"
        # the cell sits in a row that starts with its batch size
        assert any(re.match(rf"^\S\s+{bs} \S", line) for line in rows), grid
    blocks = grid.count("batch \\ lr")
    assert blocks >= (2 if n_lrs * 16 > width else 1)
    for bs in SIZES:  # every block keeps the batch-size column
        assert len(re.findall(rf"^\S\s+{bs} \S", grid, re.MULTILINE)) == blocks
    for lr in lrs:
        assert re.search(rf"[┃│] {re.escape(f'{lr:g}')}\s", grid), f"lr {lr:g} header missing"


def test_a_grid_that_fits_stays_one_block() -> None:
    result, _ = grid_result([0.01, 0.1, 1.0])
    assert rendered(result, 110).count("batch \\ lr") == 1


def test_the_legend_names_every_status_symbol() -> None:
    words = legend().plain
    for symbol, word in (("✓", "healthy"), ("!", "unstable"), ("✗", "diverged"),
                         ("E", "error"), ("T", "timeout"), ("M", "out of memory")):
        assert f"{symbol} {word}" in words
    result, _ = grid_result([0.01, 0.1, 1.0])
    text = rendered(result, 80)
    assert "✓ healthy" in text.split("Findings")[0]
