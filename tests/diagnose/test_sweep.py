"""Sweep-level analysis on synthetic grids with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from stabcheck.diagnose.sweep import batch_size_exponent
from tests.diagnose.helpers import codes, decreasing, record, run


def grid(outcomes: dict[tuple[int, float, int], str], n: int = 100) -> list:
    """Records for {(bs, lr, seed): 'ok' | 'nan' | 'flat' | float final loss}."""
    out = []
    for i, ((bs, lr, seed), kind) in enumerate(sorted(outcomes.items())):
        if kind == "nan":
            loss = np.r_[decreasing(n // 2, seed=seed), [np.nan]]
            out.append(record(loss, lr=lr, seed=seed, batch_size=bs, index=i,
                              outcome="nonfinite", first_nonfinite_step=n // 2))
        else:
            out.append(record(decreasing(n, seed=seed), lr=lr, seed=seed, batch_size=bs,
                              index=i))
    return out


def test_max_stable_lr_requires_every_seed_and_marks_the_censored_boundary() -> None:
    outcomes = {(32, lr, s): "ok" for lr in (0.01, 0.1, 1.0) for s in (0, 1)}
    outcomes[(32, 1.0, 1)] = "nan"  # one seed diverges at lr=1: fragile, not stable
    outcomes.update({(128, lr, s): "ok" for lr in (0.01, 0.1, 1.0) for s in (0, 1)})
    d = run(grid(outcomes))
    assert d.summary.max_stable_lr == {"32": 0.1, "128": 1.0}
    assert d.summary.boundary_found == {"32": True, "128": False}
    [fragile] = [f for f in d.findings if f.code == "SC502"]
    assert "1 of 2 seeds" in fragile.message
    [cell] = d.summary.fragile_cells
    assert (cell.batch_size, cell.lr, cell.diverged_seeds, cell.seeds) == (32, 1.0, (1,), (0, 1))
    texts = [r.text for r in d.summary.recommendations if r.what == "learning_rate"]
    assert ("bs=32: max stable LR 0.1 (the largest LR healthy on every seed), smallest "
            "diverging LR 1;") in texts[0]
    assert d.summary.min_diverging_lr == {"32": 1.0, "128": None}
    assert "max stable LR >= 1 (the largest swept" in texts[1]


def test_no_stable_lr_at_a_batch_size_is_an_error() -> None:
    d = run(grid({(64, lr, 0): "nan" for lr in (0.1, 1.0)}))
    assert "SC504" in codes(d) and d.summary.max_stable_lr == {"64": None}


@pytest.mark.parametrize(("target", "flagged"), [(0.05, False), (0.06, True), (0.5, True)])
def test_stability_margin_of_the_target_lr(target: float, flagged: bool) -> None:
    outcomes = {(32, lr, 0): "ok" for lr in (0.01, 0.1)} | {(32, 1.0, 0): "nan"}
    d = run(grid(outcomes), config={"target_lr": target})
    margin = d.summary.stability_margin
    assert margin is not None and margin.margin == pytest.approx(0.1 / target, rel=1e-3)
    assert ("SC501" in codes(d)) is flagged
    if flagged:
        [f] = [f for f in d.findings if f.code == "SC501"]
        assert "0.05" in f.recommendation  # max stable LR / 2


def test_margin_is_judged_at_the_target_batch_size_when_given() -> None:
    outcomes = {(32, lr, 0): "ok" for lr in (0.01, 0.1)} | {(32, 1.0, 0): "nan"}
    outcomes |= {(256, 0.01, 0): "ok", (256, 0.1, 0): "nan", (256, 1.0, 0): "nan"}
    worst = run(grid(outcomes), config={"target_lr": 0.04})
    margin = worst.summary.stability_margin
    assert margin is not None and margin.batch_size == 256 and "SC501" in codes(worst)
    at_32 = run(grid(outcomes), config={"target_lr": 0.04, "target_batch_size": 40})
    assert at_32.summary.stability_margin is not None
    assert at_32.summary.stability_margin.batch_size == 32
    assert "SC501" not in codes(at_32)


def test_lr_sensitivity_matches_wortsman_definition() -> None:
    # Three LRs at one batch size: final losses 0.5, 0.2 and diverged (counts as loss_0).
    recs = [record(np.r_[np.full(50, 2.0), np.full(50, 0.5)], lr=0.01, index=0),
            record(np.r_[np.full(50, 2.0), np.full(50, 0.2)], lr=0.1, index=1),
            record(np.r_[np.full(10, 2.0), [np.nan]], lr=1.0, index=2, outcome="nonfinite",
                   first_nonfinite_step=10)]
    d = run(recs)
    sens = d.summary.to_json()["lr_sensitivity"]["32"]
    # loss_0 = 2.0, loss* = 0.2: mean of (0.3, 0.0, 1.8) = 0.7; normalised 0.7 / 1.8.
    assert sens["lr_sensitivity"] == pytest.approx(0.7)
    assert sens["normalised"] == pytest.approx(0.7 / 1.8, rel=1e-3)


def test_seed_spread_relative_to_the_decrease() -> None:
    recs = [record(np.r_[np.full(50, 2.0), np.full(50, final)], seed=s, index=s)
            for s, final in enumerate((0.2, 1.2))]
    d = run(recs)
    # (1.2 - 0.2) / (2.0 - median(0.2, 1.2)) = 1.0 / 1.3 = 0.77 > 0.5
    [f] = [f for f in d.findings if f.code == "SC503"]
    assert f.value == pytest.approx(1.0 / 1.3)
    assert d.summary.max_seed_spread == pytest.approx(1.0 / 1.3, rel=1e-3)


def test_batch_size_exponent() -> None:
    assert batch_size_exponent({32: 0.1, 128: 0.2}, {32: True, 128: True}) == \
        pytest.approx(0.5)
    assert batch_size_exponent({32: 0.1, 128: 0.4}, {32: True, 128: True}) == \
        pytest.approx(1.0)
    assert batch_size_exponent({32: 0.1, 128: 0.4}, {32: True, 128: False}) is None


def test_warmup_is_suggested_when_early_steps_spike() -> None:
    loss = decreasing(200)
    loss[18] += 3.0
    d = run([record(loss)], config={"probe": {"steps": 200, "warmup_steps": 0}})
    [rec] = [r for r in d.summary.recommendations if r.what == "warmup_steps"]
    assert rec.value == 36 and "step 18" in rec.text
