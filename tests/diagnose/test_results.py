"""The contract between diagnose and the reports: one declared list of families, code meanings
in the registry, typed frozen results with one rounding rule."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import numpy as np
import pytest

from stabcheck.diagnose import FAMILIES
from stabcheck.diagnose.results import CellSummary, FrozenMap, StabilityMargin, SweepSummary
from stabcheck.findings import REGISTRY, codes_where, make
from tests.diagnose.helpers import decreasing, record, run


def test_every_code_belongs_to_one_declared_family() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    by_name = {f.name: f for f in FAMILIES}
    for code, info in REGISTRY.items():
        assert info.family in by_name, (code, info.family)
        assert code.startswith(by_name[info.family].prefix), code
        assert info.status in (None, "diverged", "hint"), code
        assert info.junit in ("failure", "crash"), code
        assert set(info.plots) <= {"loss", "grad_norm", "sharpness"}, code


def test_code_meanings_come_from_the_registry() -> None:
    assert codes_where(lr_fixable=False) == ("SC104", "SC105")
    assert codes_where(junit="crash") == ("SC801", "SC802", "SC803")
    assert {"SC201", "SC202", "SC205", "SC302"} <= set(codes_where(suggests_warmup=True))
    assert "SC101" in codes_where(status="diverged")
    for hint in codes_where(status="hint"):  # shown once in the summary, never a finding
        with pytest.raises(ValueError, match="hint"):
            make(hint, "every audit gets this")


def test_results_are_frozen_and_rounded_once() -> None:
    lr = 1 / 3  # a configured value: kept exactly
    margin = StabilityMargin(target_lr=lr, batch_size=32, max_stable_lr=lr, margin=0.123456789,
                             by_batch_size={"32": 0.123456789})
    assert margin.target_lr == lr and margin.max_stable_lr == lr
    assert margin.margin == 0.123457 and margin.by_batch_size["32"] == 0.123457
    with pytest.raises(dataclasses.FrozenInstanceError):
        margin.margin = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        margin.by_batch_size["32"] = 1.0  # type: ignore[index]
    cell = CellSummary(batch_size=32, lr=lr, seeds=(0, 1), statuses=("healthy", "healthy"),
                       median_final_loss=float("nan"))
    assert cell.lr == lr and cell.median_final_loss is None  # not finite: None


def test_the_summary_is_typed_copies_and_serialises_to_the_report_keys() -> None:
    recs = [record(decreasing(60, seed=s), lr=lr, seed=s, index=i)
            for i, (lr, s) in enumerate((lr, s) for lr in (0.01, 0.1) for s in (0, 1))]
    d = run(recs, config={"target_lr": 0.01})
    summary = d.summary
    assert isinstance(summary, SweepSummary)
    assert summary.max_stable_lr == {"32": 0.1}
    [cell] = [c for c in summary.cells if c.lr == 0.1]
    assert cell.seeds == (0, 1) and cell.statuses == ("healthy", "healthy")
    finals = [p.stats.final_loss for p in d.probes if p.record.lr == 0.1]
    assert cell.median_final_loss == pytest.approx(float(np.median(finals)), rel=1e-5)
    assert all(p.cell is cell for p in d.probes if p.record.lr == 0.1)
    data = summary.to_json()
    assert "cells" not in data and "init" not in data and "curvature" not in data
    assert {"probes", "by_status", "max_stable_lr", "min_diverging_lr", "stability_margin",
            "lr_sensitivity", "seed_spread", "max_seed_spread", "fragile_cells",
            "boundary_found", "batch_size_exponent", "clipping", "gradient_flow_at_init",
            "oom_batch_sizes", "recommendations"} == set(data)
    assert isinstance(data["recommendations"], list) and "batch_size" in data[
        "recommendations"][0]
    json.dumps(data, allow_nan=True)  # plain data only
    assert pickle.loads(pickle.dumps(summary)) == summary
    assert copy.deepcopy(summary) == summary
    assert isinstance(summary.by_status, FrozenMap)
