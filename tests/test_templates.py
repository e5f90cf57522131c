"""`stabcheck init --from-template X` writes files that validate and audit as written.

Each template is written into a fresh folder, then validated and audited exactly as written,
from a different working directory (its relative paths resolve against the config file), with
only the grid made tiny on the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabcheck.cli import cli

# A one-probe grid: one seed, one learning rate (clipping at grad_clip: 1.0 fires on most of
# the first ~30 steps, the whole of a shorter probe, so the clipped templates get 60).
TINY = ("--lr", "0.003", "--seeds", "0", "--batch-size", "32")


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def init_validate_audit(template: str, steps: int, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict, list[Path]]:
    folder = tmp_path / "project"
    config = folder / "stabcheck.yaml"
    code, _, err = run("init", "--from-template", template, config)
    assert code == 0, err
    written = sorted(folder.iterdir())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths in the config are relative to it, not to the cwd
    code, _, err = run("validate", config)
    assert code == 0, err
    assert f"{config}: ok" in err
    code, out, err = run("audit", config, "--out", tmp_path / "results", "--format", "json",
                         "--steps", steps, *TINY)
    return code, json.loads(out), written


@pytest.mark.parametrize("template, files, steps", [
    ("tabular", ["stabcheck.yaml", "train.csv"], 60),
    ("custom", ["data.py", "model.py", "stabcheck.yaml"], 60),
    pytest.param("hf", ["stabcheck.yaml"], 12, marks=pytest.mark.slow),  # GPT-2: ~20 s
])
def test_template_runs_as_written(template: str, files: list[str], steps: int, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if template == "hf":
        pytest.importorskip("transformers")
    code, report, written = init_validate_audit(template, steps, tmp_path, monkeypatch)
    assert [p.name for p in written] == files
    assert code == 0 and report["verdict"] == "passed", report["findings"]
    (probe,) = report["probes"]
    assert probe["status"] == "healthy" and probe["steps_run"] == steps
    assert probe["stats"]["final_loss"] < probe["stats"]["initial_loss"]  # it trains


def test_starter_template_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    # The starter's own grid and clip values are its documentation's business: here it only
    # has to run. A one-probe grid may pass (0) or fail the gate (1), never 2 or 3.
    code, report, written = init_validate_audit("starter", 12, tmp_path, monkeypatch)
    assert [p.name for p in written] == ["stabcheck.yaml"]
    assert code in (0, 1) and code == report["exit_code"]
    (probe,) = report["probes"]
    assert probe["steps_run"] == 12 and probe["status"] not in ("error", "timeout", "oom")
