"""The bundled sample configs behave as their headers promise (slow: they train for real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabcheck.cli import cli

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"


def audit(config: Path, out: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["audit", str(config), "--out", str(out), "--format",
                                      "json", *extra], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


def flagged(report: dict, *severities: str) -> set[int]:
    """Probe indices named by findings of the given severities."""
    return {p for f in report["findings"] if f["severity"] in severities for p in f["probes"]}


@pytest.mark.slow
def test_quickstart_is_healthy(tmp_path: Path) -> None:
    code, report = audit(SAMPLES / "quickstart.yaml", tmp_path / "r")
    assert code == 0
    assert len(report["probes"]) == 24
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert [f for f in report["findings"] if f["severity"] in ("warning", "error")] == []
    assert report["summary"]["max_stable_lr"] == {"32": 0.03, "128": 0.03}
    assert report["summary"]["recommendations"]


@pytest.mark.slow
def test_diverging_fails_at_its_high_learning_rates(tmp_path: Path) -> None:
    code, report = audit(SAMPLES / "diverging.yaml", tmp_path / "r")
    assert code == 1
    diverged = {(p["lr"], p["seed"]) for p in report["probes"] if p["status"] == "diverged"}
    assert diverged and {lr for lr, _ in diverged} == {1.0}
    diverged_index = {p["index"] for p in report["probes"] if p["status"] == "diverged"}
    # Exactly the diverged cells are flagged, and nothing else is.
    assert flagged(report, "warning", "error") == diverged_index
    sc101 = {p for f in report["findings"] if f["code"] == "SC101" for p in f["probes"]}
    assert sc101 == diverged_index
    assert report["summary"]["max_stable_lr"] == {"64": 0.1}


@pytest.mark.slow
def test_deep_sigmoid_gets_the_vanishing_gradient_finding(tmp_path: Path) -> None:
    code, report = audit(SAMPLES / "deep_sigmoid.yaml", tmp_path / "r")
    assert code == 1
    vanishing = [f for f in report["findings"] if f["code"] == "SC303"]
    assert vanishing and all(f["value"] < 1e-3 for f in vanishing)
    assert "layers.0.linear" in vanishing[0]["message"]


@pytest.mark.slow
def test_same_depth_with_relu_he_init_and_residuals_does_not(tmp_path: Path) -> None:
    code, report = audit(SAMPLES / "deep_residual.yaml", tmp_path / "r")
    assert code == 0
    assert "SC303" not in {f["code"] for f in report["findings"]}
    # Every LR trains; the largest blows up ~4x above its initial loss in its first steps and
    # recovers (SC205, a warning: the gate passes).
    assert {p["status"] for p in report["probes"] if p["lr"] < 0.03} == {"healthy"}
    assert all(p["findings"] == ["SC205"] for p in report["probes"] if p["lr"] == 0.03)


@pytest.mark.slow
def test_custom_user_code_sample(tmp_path: Path) -> None:
    code, report = audit(SAMPLES / "custom" / "config.yaml", tmp_path / "r")
    assert code == 0
    assert report["config"]["model"]["factory"] == "./models.py:build"
    assert all(p["steps_run"] == 150 for p in report["probes"])


@pytest.mark.slow
def test_gan_sample_judges_each_named_loss_with_the_normal_gate(tmp_path: Path) -> None:
    code, report = audit(SAMPLES / "custom_step_gan.yaml", tmp_path / "r")
    assert report["fail_on"] == "error" and code == 0
    statuses = {p["lr"]: p["status"] for p in report["probes"]}
    assert statuses[1e-4] == statuses[1e-3] == "healthy"  # g_loss rises: not a divergence
    assert "SC901" in {f["code"] for f in report["findings"]}
    assert not [f for f in report["findings"] if f["severity"] == "error"]
    # findings that depend on the loss say which one
    loss_codes = {"SC102", "SC201", "SC202", "SC203", "SC204", "SC205"}
    assert all(f["message"].startswith(("d_loss: ", "g_loss: "))
               for f in report["findings"] if f["code"] in loss_codes)
