"""CI-facing CLI behaviour: several outputs at once, the job summary, trace export,
``[tool.stabcheck]`` precedence and the ``compare`` gate."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from stabcheck.cli import cli

DIVERGING = {"data": {"builtin": "regression",
                      "kwargs": {"n_samples": 96, "n_features": 4, "n_targets": 3}},
             "loss": "mse",
             "sweep": {"learning_rates": [0.01, 10.0], "seeds": [0], "batch_sizes": [16]}}


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout


def test_several_outputs_in_one_run(write_config, tmp_path: Path) -> None:
    config = write_config(DIVERGING)
    code, stdout = run("audit", str(config), "--out", str(tmp_path / "r"), "--format", "json",
                       "-o", f"junit={tmp_path / 'j.xml'}", "-o", f"markdown={tmp_path / 's.md'}",
                       "-o", f"github={tmp_path / 'a.txt'}", "--traces",
                       str(tmp_path / "t.csv"))
    assert code == 1
    report = json.loads(stdout)  # --format json still goes to stdout
    assert report["verdict"] == "failed"
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert "FAILED" in (tmp_path / "s.md").read_text()
    assert (tmp_path / "a.txt").read_text().startswith("::error file=")
    traces = pd.read_csv(tmp_path / "t.csv")
    assert set(traces["lr"]) == {0.01, 10.0}
    assert {"probe", "seed", "batch_size", "status", "step", "loss", "grad_norm",
            "step_lr"} <= set(traces.columns)
    healthy = traces[traces["lr"] == 0.01]
    assert list(healthy["step"]) == list(range(12))


def test_plain_output_file_takes_the_format_and_stdout_stays_empty(write_config,
                                                                   tmp_path: Path) -> None:
    code, stdout = run("audit", str(write_config()), "--out", str(tmp_path / "r"), "--format",
                       "junit", "-o", str(tmp_path / "out.xml"))
    assert code == 0 and stdout == ""
    assert ET.parse(tmp_path / "out.xml").getroot().tag == "testsuites"


def test_unknown_output_format_is_a_usage_error(write_config, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["audit", str(write_config()), "-o", "yaml=x"])
    assert result.exit_code == 2 and "unknown format 'yaml'" in result.output


def test_github_step_summary_is_appended(write_config, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    code, _ = run("audit", str(write_config(DIVERGING)), "--out", str(tmp_path / "r"),
                  env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert code == 1
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "stabcheck: tiny — FAILED" in text


def test_report_rerenders_any_format_and_exports_parquet(write_config, tmp_path: Path) -> None:
    run("audit", str(write_config(DIVERGING)), "--out", str(tmp_path / "r"))
    code, stdout = run("report", str(tmp_path / "r"), "--format", "markdown", "--traces",
                       str(tmp_path / "t.parquet"))
    assert code == 1 and stdout.startswith("## ❌ stabcheck: tiny")
    assert len(pd.read_parquet(tmp_path / "t.parquet")) > 0


PYPROJECT = """
[project]
name = "mine"

[tool.stabcheck]
fail_on = "never"
thresholds = {spike_sigma = 9.0, stability_margin = 3.0}
"""


def test_pyproject_defaults_and_precedence(write_config, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    config = write_config(DIVERGING)
    # [tool.stabcheck] fail_on=never: the diverging audit passes...
    code, stdout = run("audit", str(config), "--out", str(tmp_path / "a"), "--format", "json")
    report = json.loads(stdout)
    assert code == 0 and report["fail_on"] == "never"
    assert report["config"]["thresholds"]["spike_sigma"] == 9.0
    assert report["config"]["thresholds"]["stability_margin"] == 3.0
    # ...the config file overrides it, key by key (thresholds merged, not replaced)...
    config = write_config({**DIVERGING, "fail_on": "error", "thresholds": {"spike_sigma": 7.0}})
    code, stdout = run("audit", str(config), "--out", str(tmp_path / "b"), "--format", "json")
    report = json.loads(stdout)
    assert code == 1 and report["config"]["thresholds"]["spike_sigma"] == 7.0
    assert report["config"]["thresholds"]["stability_margin"] == 3.0
    # ...a flag overrides both...
    code, _ = run("audit", str(config), "--out", str(tmp_path / "c"), "--fail-on", "never")
    assert code == 0
    # ...and --isolated ignores pyproject.toml.
    config = write_config(DIVERGING)
    code, stdout = run("audit", str(config), "--out", str(tmp_path / "d"), "--format", "json",
                       "--isolated")
    assert code == 1 and json.loads(stdout)["config"]["thresholds"]["spike_sigma"] == 6.0


def test_bad_pyproject_section_is_a_one_line_config_error(write_config, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.stabcheck]\nfail_onn = "never"\nthresholds = {spike_sigma = -1}\n')
    result = CliRunner().invoke(cli, ["validate", str(write_config())])
    assert result.exit_code == 2
    assert "tool.stabcheck.fail_onn: unknown key 'fail_onn' (did you mean 'fail_on'?)" \
        in result.output
    assert "tool.stabcheck.thresholds.spike_sigma:" in result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """A real baseline audit whose max stable LR at bs=16 is 0.1."""
    import yaml

    from tests.conftest import TINY, deep_update

    root = tmp_path_factory.mktemp("compare")
    cfg = deep_update(TINY, {"name": "base", "sweep": {"learning_rates": [0.01, 0.1],
                                                       "seeds": [0], "batch_sizes": [16]}})
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run("audit", str(path), "--out", str(root / "base"))
    return {"base": root / "base"}


def test_compare_exit_codes(reports, tmp_path: Path) -> None:
    code, stdout = run("compare", str(reports["base"]), str(reports["base"] / "report.json"))
    assert code == 0 and "compare: OK" in stdout
    base = json.loads((reports["base"] / "report.json").read_text())
    assert base["summary"]["max_stable_lr"] == {"16": 0.1}
    # A regressed run: lr=0.1 now diverges.
    worse = json.loads(json.dumps(base))
    worse["summary"]["max_stable_lr"]["16"] = 0.01
    worse["probes"][-1]["status"] = "diverged"
    worse["findings"].append({"code": "SC101", "severity": "error", "message": "NaN",
                              "probes": [worse["probes"][-1]["index"]]})
    for v in worse["summary"]["lr_sensitivity"].values():
        v["normalised"] = (v["normalised"] or 0) + 0.5
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    code, stdout = run("compare", str(reports["base"]), str(tmp_path / "worse.json"))
    assert code == 1
    assert "max stable LR at bs=16 dropped: 0.1 → 0.01" in stdout
    assert "new error finding: SC101 NaN" in stdout
    assert "cell lr=0.1 bs=16 was healthy and now fails (diverged)" in stdout
    assert "LR sensitivity at bs=16 worsened" in stdout
    # The other way round, everything is an improvement and the gate passes.
    code, stdout = run("compare", str(tmp_path / "worse.json"), str(reports["base"]))
    assert code == 0 and "Improvements:" in stdout
    # Tolerances loosen the gate.
    code, _ = run("compare", str(reports["base"]), str(tmp_path / "worse.json"),
                  "--lr-drop-tolerance", "0.95", "--lr-sensitivity-tolerance", "1")
    assert code == 1  # the new error finding and the failed cell still regress


def test_compare_bad_input_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "x.json"),
                                      str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "not a stabcheck JSON report" in result.output
