"""Attacks on the CI gate itself: a run that must fail or stop must never exit 0.

Items 1-3 of issue 17: ``sys.exit(0)`` from user code, ``--resume`` with changed verdict
settings, ``compare`` against an incomplete NEW.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.attack.helpers import TWO_PROBES, journal_lines, one_line_error, report, run
from tests.conftest import deep_update


def test_sys_exit_0_in_the_factory_is_exit_3(write_config, write_module) -> None:
    write_module("quits.py", "import sys\ndef build():\n    sys.exit(0)\n")
    path = write_config(deep_update(TWO_PROBES, {"model": {
        "builtin": None, "factory": "./quits.py:build", "kwargs": {}}}))
    for command in (["audit", path], ["validate", path]):
        result = run(*command)
        assert result.exit_code in (2, 3), result.output  # never 0: a CI gate reads it as passed
        assert "sys.exit(0)" in one_line_error(result)
    assert run("audit", path).exit_code == 3


def test_sys_exit_0_in_forward_under_the_local_executor_is_exit_3_with_a_report(
        write_config, write_module, tmp_path: Path) -> None:
    write_module("quits_late.py", """
        import sys
        import inspect
        from torch import nn
        class Quits(nn.Linear):
            def forward(self, x):
                if any(f.function == "step" for f in inspect.stack()):
                    sys.exit(0)  # during the first training step
                return super().forward(x)
        def build():
            return Quits(4, 3)
    """)
    path = write_config(deep_update(TWO_PROBES, {"model": {
        "builtin": None, "factory": "./quits_late.py:build", "kwargs": {}}}))
    out = tmp_path / "r"
    result = run("audit", path, "--out", out, "--executor", "local", "--engine", "sequential")
    assert result.exit_code == 3, result.output
    assert "SystemExit(0)" in one_line_error(result)
    assert report(out)["verdict"] == "incomplete" and report(out)["complete"] is False


def _resume_with(write_config, tmp_path: Path, first: dict, second: dict):
    out = tmp_path / "r"
    done = run("audit", write_config(deep_update(TWO_PROBES, first), name="a.yaml"),
               "--out", out, "--format", "json")
    again = run("audit", write_config(deep_update(TWO_PROBES, second), name="b.yaml"),
                "--resume", out, "--format", "json")
    assert sum(1 for e in journal_lines(out) if e["type"] == "probe") == 2  # probes reused
    return done, again, out


def test_resume_with_a_stricter_fail_on_fails_as_a_fresh_run_would(write_config,
                                                                   tmp_path: Path) -> None:
    diverging = {"sweep": {"learning_rates": [0.01, 1e4]}}
    done, again, out = _resume_with(write_config, tmp_path,
                                    deep_update(diverging, {"fail_on": "never"}),
                                    deep_update(diverging, {"fail_on": "error"}))
    assert done.exit_code == 0
    assert again.exit_code == 1, again.stderr  # the old fail_on: never would pass
    assert json.loads(again.stdout)["fail_on"] == "error"
    assert "changed verdict settings (fail_on)" in again.stderr
    # report later judges the same way: the settings line is in the journal
    assert run("report", out).exit_code == 1


def test_resume_with_changed_thresholds_target_lr_and_name_uses_the_current_ones(
        write_config, tmp_path: Path) -> None:
    done, again, _ = _resume_with(
        write_config, tmp_path, {"name": "before"},
        {"name": "after", "target_lr": 0.1, "thresholds": {"stability_margin": 1000.0}})
    assert done.exit_code == 0
    now = json.loads(again.stdout)
    assert now["name"] == "after" and now["config"]["target_lr"] == 0.1
    assert now["config"]["thresholds"]["stability_margin"] == 1000.0
    # a max stable LR of 0.1 is nowhere near 1000x the target: the margin finding fails it
    assert again.exit_code == 1, again.stderr


def _audit(write_config, out: Path, updates: dict, name: str) -> Path:
    result = run("audit", write_config(deep_update(TWO_PROBES, updates), name=name), "--out",
                 out, "--format", "json")
    assert result.exit_code in (0, 1), result.output
    return out


def test_compare_fails_an_incomplete_or_empty_new(write_config, tmp_path: Path) -> None:
    base = _audit(write_config, tmp_path / "base", {}, "base.yaml")
    assert run("compare", base, base).exit_code == 0
    # NEW killed after one of two probes: only the journal's header and first probe remain
    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (base / "probes.jsonl").read_text().splitlines(keepends=True)
    first_probe = next(i for i, line in enumerate(lines) if '"type":"probe"' in line)
    (killed / "probes.jsonl").write_text("".join(lines[:first_probe + 1]))
    result = run("compare", base, killed)
    assert result.exit_code == 1 and "NEW is not a complete audit" in result.stdout
    # a not-carried-out or empty report
    data = report(base)
    for name, change in (("nco", {"verdict": "not_carried_out", "complete": True}),
                         ("empty", {"probes": [], "findings": []})):
        (tmp_path / f"{name}.json").write_text(json.dumps({**data, **change}))
        result = run("compare", base, tmp_path / f"{name}.json")
        assert result.exit_code == 1, (name, result.output)
    # an incomplete BASELINE cannot be compared against: exit 2, not a pass
    result = run("compare", killed, base)
    assert result.exit_code == 2 and "BASELINE" in one_line_error(result)


def test_compare_fails_when_new_lacks_a_batch_size_of_the_baseline(write_config,
                                                                   tmp_path: Path) -> None:
    base = _audit(write_config, tmp_path / "base", {"sweep": {"batch_sizes": [8, 16]}},
                  "base.yaml")
    new = _audit(write_config, tmp_path / "new", {"sweep": {"batch_sizes": [16]}}, "new.yaml")
    result = run("compare", base, new)
    assert result.exit_code == 1 and "bs=8 was audited in BASELINE but not in NEW" in \
        result.stdout
