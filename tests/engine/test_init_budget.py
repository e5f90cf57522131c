"""Curvature at init: the once-per-audit budget, the adaptive-optimizer skip, the switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stabcheck.audit import audit
from stabcheck.engine.curvature.budget import (
    INIT_BUDGET,
    MAX_ITERS,
    MIN_BATCH,
    MIN_ITERS,
    NOISE_SHARE,
    plan_init,
    sharpness_cost,
)
from stabcheck.engine.curvature.noise import NOISE_DRAWS
from stabcheck.errors import ConfigError
from stabcheck.journal import read_journal


def test_a_large_audit_gets_the_full_measurement_within_budget() -> None:
    plan = plan_init([0, 1, 2], n=4096, probe_cost=24 * 500 * 64.0, noise_pair=(32, 128))
    assert plan.sharpness_seeds == (0, 1, 2) and plan.batch == 512
    assert plan.max_iters == MAX_ITERS and plan.noise_draws == NOISE_DRAWS
    assert plan.cost <= plan.budget == pytest.approx(INIT_BUDGET * 24 * 500 * 64)


@pytest.mark.parametrize("probe_cost", [3e4, 6e4, 1.2e5, 2.5e5, 5e5])
def test_the_batch_shrinks_before_seeds_are_dropped_and_the_cost_stays_in_budget(
        probe_cost: float) -> None:
    plan = plan_init([0, 1, 2], n=4096, probe_cost=probe_cost, noise_pair=(16, 64))
    assert plan.budget is not None and plan.cost <= plan.budget
    assert plan.max_iters >= MIN_ITERS and MIN_BATCH <= plan.batch <= 512
    assert plan.noise_draws * 80 <= NOISE_SHARE * plan.budget
    if len(plan.sharpness_seeds) < 3:  # seeds are dropped only once the batch is at its floor
        assert plan.batch == MIN_BATCH


def test_more_budget_never_measures_less() -> None:
    plans = [plan_init([0, 1], n=2048, probe_cost=c, noise_pair=(8, 32))
             for c in (1e3, 1e4, 1e5, 1e6)]
    cost = [len(p.sharpness_seeds) * sharpness_cost(p.batch, p.max_iters) for p in plans]
    assert cost == sorted(cost) and [p.noise_draws for p in plans] == sorted(
        p.noise_draws for p in plans)


def test_a_tiny_budget_still_measures_one_seed_at_the_floor() -> None:
    plan = plan_init([3, 4], n=96, probe_cost=768.0, noise_pair=(4, 16))
    assert plan.sharpness_seeds == (3,) and plan.batch == MIN_BATCH
    assert plan.max_iters == MIN_ITERS and plan.noise_draws == 0


def test_adaptive_optimizers_spend_the_budget_on_the_noise_scale_alone() -> None:
    plan = plan_init([0, 1], n=4096, probe_cost=2000.0, noise_pair=(16, 64), sharpness=False)
    assert plan.sharpness_seeds == () and plan.noise_draws == 2  # 200 / 80: all of it
    assert plan.cost == 160.0


def _init_reports(out: Path) -> dict[int, dict]:
    return read_journal(out).init


def test_adam_audit_measures_no_sharpness_at_init_and_the_noise_scale_once(
        write_config, tmp_path: Path) -> None:
    config = write_config({"optimizer": {"name": "adam", "kwargs": {}},
                           "probe": {"steps": 200}})
    audit(config, out_dir=tmp_path / "out")
    init = _init_reports(tmp_path / "out")
    assert sorted(init) == [0, 1]
    for report in init.values():
        curv = report["curvature"]
        assert curv["sharpness"] is None and curv["hvps"] == 0
        assert curv["sharpness_skipped"].startswith("not measured: no LR ceiling")
        assert curv["prediction"]  # the note saying why there is no ceiling
    assert init[0]["curvature"]["noise_scale"]["draws"] >= 2
    assert init[1]["curvature"]["noise_scale"] is None  # once per audit


def test_sgd_audit_measures_every_seed_by_lanczos(write_config, tmp_path: Path) -> None:
    config = write_config({"probe": {"steps": 400}})  # 4 probes x 400 x 16: a full budget
    result = audit(config, out_dir=tmp_path / "out")
    init = _init_reports(tmp_path / "out")
    for seed in (0, 1):
        curv = init[seed]["curvature"]
        assert curv["method"] == "lanczos" and curv["sharpness"] > 0
        assert 2 <= curv["hvps"] <= curv["plan"]["max_iters"]
        assert curv["plan"]["planned_example_grads"] <= curv["plan"]["budget_example_grads"]
    curvature = result.report.diagnosis.summary.curvature
    assert curvature is not None
    ceiling = curvature.by_batch_size["16"].predicted_lr_ceiling
    assert ceiling is not None and ceiling > 0


def test_init_curvature_can_be_switched_off(write_config, tmp_path: Path) -> None:
    config = write_config({"probe": {"init_curvature": False}})
    result = audit(config, out_dir=tmp_path / "out")
    init = _init_reports(tmp_path / "out")
    assert sorted(init) == [0, 1] and all("curvature" not in r for r in init.values())
    assert all("initial_loss" in r or "layers" in r for r in init.values())  # checks still ran
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("probe.init_curvature: false" in n for n in report.get("notes", [])), report.keys()
    curvature = result.report.diagnosis.summary.curvature
    assert curvature is None or not curvature.by_batch_size


def test_init_curvature_switch_is_validated(write_config) -> None:
    with pytest.raises(ConfigError, match=r"probe\.init_curvature"):
        audit(write_config({"probe": {"init_curvature": "yes"}}))
