"""The bundled sample configs behave as their headers promise (slow: they train for real)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabcheck.cli import cli

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"


def audit(config: Path, out: Path, *extra: str) -> tuple[int, dict, float]:  # type: ignore[type-arg]
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["audit", str(config), "--out", str(out), "--format",
                                      "json", *extra], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout), time.perf_counter() - started


@pytest.mark.slow
def test_quickstart_is_healthy_and_fast(tmp_path: Path) -> None:
    code, report, seconds = audit(SAMPLES / "quickstart.yaml", tmp_path / "r")
    assert code == 0
    assert len(report["probes"]) == 24
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert [f for f in report["findings"] if f["severity"] in ("warning", "error")] == []
    assert seconds < 60


@pytest.mark.slow
def test_diverging_fails_at_its_high_learning_rates(tmp_path: Path) -> None:
    code, report, _ = audit(SAMPLES / "diverging.yaml", tmp_path / "r")
    assert code == 1
    diverged = {(p["lr"], p["seed"]) for p in report["probes"] if p["status"] == "diverged"}
    assert diverged and {lr for lr, _ in diverged} == {1.0}
    flagged = {p for f in report["findings"] if f["code"] == "SC101" for p in f["probes"]}
    assert flagged == {p["index"] for p in report["probes"] if p["status"] == "diverged"}


@pytest.mark.slow
def test_custom_user_code_sample(tmp_path: Path) -> None:
    code, report, _ = audit(SAMPLES / "custom" / "config.yaml", tmp_path / "r")
    assert code == 0
    assert report["config"]["model"]["factory"] == "./models.py:build"
    assert all(p["steps_run"] == 150 for p in report["probes"])
