"""The command line: exit codes, output streams and one-line errors (through CliRunner)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabcheck import __version__
from stabcheck.cli import cli


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_exit_0_and_json_on_stdout(runner: CliRunner, write_config, tmp_path: Path) -> None:
    result = invoke(runner, "audit", write_config(), "--out", tmp_path / "r", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds nothing but the JSON report
    assert report["verdict"] == "passed" and report["exit_code"] == 0
    assert report["schema_version"] == 1
    assert len(report["probes"]) == 4
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert "Verdict: PASSED" in result.stderr  # the human report went to stderr
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk["probes"] == report["probes"]


def test_exit_1_on_divergence_and_exit_zero(runner: CliRunner, write_config,
                                            tmp_path: Path) -> None:
    path = write_config({"sweep": {"learning_rates": [0.01, 1e4]}})
    result = invoke(runner, "audit", path, "--out", tmp_path / "a")
    assert result.exit_code == 1
    assert "SC101" in result.stderr and "Verdict: FAILED" in result.stderr
    result = invoke(runner, "audit", path, "--out", tmp_path / "b", "--exit-zero")
    assert result.exit_code == 0
    result = invoke(runner, "audit", path, "--out", tmp_path / "c", "--fail-on", "never")
    assert result.exit_code == 0


def test_exit_2_on_config_error_is_one_line_per_problem(runner: CliRunner, write_config,
                                                        tmp_path: Path) -> None:
    path = write_config({"sweep": {"lerning_rates": [0.1]}})
    result = invoke(runner, "audit", path, "--out", tmp_path / "r")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}:") and "did you mean 'learning_rates'" in lines[-1]
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing ran


def test_exit_2_on_usage_error(runner: CliRunner, write_config) -> None:
    result = invoke(runner, "audit", write_config(), "--lr", "0.1,-3")
    assert result.exit_code == 2 and "must be positive" in result.stderr
    result = invoke(runner, "audit", write_config(), "--no-such-flag")
    assert result.exit_code == 2


@pytest.mark.parametrize("text", [
    "- just\n- a list\n",
    "name: !!python/object/apply:os.system ['true']\n",
])
def test_exit_2_on_hostile_or_malformed_yaml(runner: CliRunner, write_config, text: str) -> None:
    result = invoke(runner, "audit", write_config(text=text))
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_exit_2_on_directory(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "audit", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.stderr


def test_exit_2_on_batch_size_larger_than_data(runner: CliRunner, write_config) -> None:
    result = invoke(runner, "audit", write_config(), "--batch-size", "1000")
    assert result.exit_code == 2
    assert "<command line>: sweep.batch_sizes[0]: batch size 1000 is larger" in result.stderr


def test_exit_3_when_user_code_raises_while_building(runner: CliRunner, write_config,
                                                     write_module) -> None:
    write_module("bad.py", "def build():\n    raise RuntimeError('no GPU driver')\n")
    path = write_config({"model": {"builtin": None, "factory": "./bad.py:build", "kwargs": {}}})
    result = invoke(runner, "audit", path)
    assert result.exit_code == 3
    assert "the model factory raised RuntimeError: no GPU driver" in result.stderr


def test_exit_3_when_too_few_probes_finish(runner: CliRunner, write_config, write_module,
                                           tmp_path: Path) -> None:
    write_module("fails.py", """
        from torch import nn
        class Fails(nn.Linear):
            calls = 0
            def forward(self, x):
                Fails.calls += 1
                if Fails.calls > 1:  # the trial forward passes, every probe fails
                    raise ValueError("broken")
                return super().forward(x)
        def build():
            return Fails(4, 3)
    """)
    path = write_config({"model": {"builtin": None, "factory": "./fails.py:build", "kwargs": {}}})
    result = invoke(runner, "audit", path, "--out", tmp_path / "r", "--format", "json")
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert report["verdict"] == "not_carried_out"
    assert {p["status"] for p in report["probes"]} == {"error"}


def test_exit_130_on_interrupt_with_incomplete_report(runner: CliRunner, write_config,
                                                      write_module, tmp_path: Path) -> None:
    write_module("interrupt.py", """
        import inspect
        from torch import nn
        class Interrupts(nn.Linear):
            calls = 0
            def forward(self, x):
                # Count only training steps (not the init checks, whose forward count varies).
                if any(f.function == "step" and f.filename.endswith("sequential.py")
                       for f in inspect.stack()):
                    Interrupts.calls += 1
                    if Interrupts.calls > 30:  # part-way through the third probe (12 steps each)
                        raise KeyboardInterrupt
                return super().forward(x)
        def build():
            return Interrupts(4, 3)
    """)
    path = write_config({"model": {"builtin": None, "factory": "./interrupt.py:build",
                                   "kwargs": {}}})
    # The call count above assumes one forward per step per probe: the sequential engine.
    result = invoke(runner, "audit", path, "--out", tmp_path / "r", "--format", "json",
                    "--engine", "sequential")
    assert result.exit_code == 130
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"] == "incomplete" and report["complete"] is False
    assert len(report["probes"]) == 2  # the two finished probes were kept
    assert "INCOMPLETE" in result.stderr


def test_resume_dir_reruns_nothing_that_finished(runner: CliRunner, write_config,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = invoke(runner, "audit", write_config({"sweep": {"learning_rates": [0.01]}}),
                   "--out", out, "--format", "json")
    assert first.exit_code == 0 and len(json.loads(first.stdout)["probes"]) == 2
    # Resuming the finished audit (a changed threshold is allowed: the verdict is recomputed)
    # runs nothing again and reports the same probes.
    path = write_config({"sweep": {"learning_rates": [0.01]},
                         "thresholds": {"spike_sigma": 8.0}})
    again = invoke(runner, "audit", path, "--resume", out, "--format", "json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["probes"] == json.loads(first.stdout)["probes"]
    journal = [json.loads(line) for line in (out / "probes.jsonl").open()]
    assert sum(1 for e in journal if e.get("type") == "probe") == 2  # nothing ran twice
    clash = invoke(runner, "audit", path, "--resume", out, "--out", tmp_path / "other")
    assert clash.exit_code == 2 and "name different directories" in clash.stderr
    missing = invoke(runner, "audit", path, "--resume")
    assert missing.exit_code == 2 and "--resume DIR" in missing.stderr


def test_validate(runner: CliRunner, write_config) -> None:
    result = invoke(runner, "validate", write_config())
    assert result.exit_code == 0 and "ok — 4 probes" in result.stderr
    result = invoke(runner, "validate", write_config({"model": {"kwargs": {"widht": 3}}}))
    assert result.exit_code == 2


def test_validate_and_audit_agree_on_user_code_errors(runner: CliRunner, write_config,
                                                      write_module) -> None:
    write_module("bad.py", "def build():\n    raise RuntimeError('boom')\n\n"
                 "def wrong():\n    return 42\n")
    raises = write_config({"model": {"builtin": None, "factory": "./bad.py:build",
                                     "kwargs": {}}})
    returns = write_config({"model": {"builtin": None, "factory": "./bad.py:wrong",
                                      "kwargs": {}}}, name="wrong.yaml")
    for path, code in ((raises, 3), (returns, 2)):  # raised: 3; returned the wrong thing: 2
        validated = invoke(runner, "validate", path)
        audited = invoke(runner, "audit", path, "--out", path.parent / f"out-{path.stem}")
        assert validated.exit_code == audited.exit_code == code
        assert validated.stderr.splitlines()[-1] == audited.stderr.splitlines()[-1]


def test_init_writes_a_config_that_validates(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "stabcheck.yaml"
    assert invoke(runner, "init", target).exit_code == 0
    assert "# stabcheck config" in target.read_text()
    assert invoke(runner, "validate", target).exit_code == 0
    assert invoke(runner, "init", target).exit_code == 2  # refuses to overwrite
    assert invoke(runner, "init", target, "--force").exit_code == 0


def test_explain(runner: CliRunner) -> None:
    listing = invoke(runner, "explain")
    assert listing.exit_code == 0 and "SC101" in listing.stdout
    detail = invoke(runner, "explain", "SC102")
    assert "divergence_factor = 3.0" in detail.stdout and "fastai" in detail.stdout
    assert invoke(runner, "explain", "non-finite").exit_code == 0
    unknown = invoke(runner, "explain", "SC1O1")
    assert unknown.exit_code == 2 and "did you mean 'SC101'" in unknown.stderr
    page = invoke(runner, "explain", "--markdown", "thresholds")
    assert page.exit_code == 0 and "| <a id=\"spike_sigma\"></a>`spike_sigma` |" in page.stdout
    both = invoke(runner, "explain", "SC101", "--markdown", "findings")
    assert both.exit_code == 2 and "not both" in both.stderr
    assert invoke(runner, "explain", "--markdown", "everything").exit_code == 2


def test_report_rerenders_from_results_dir(runner: CliRunner, write_config, tmp_path: Path) -> None:
    out = tmp_path / "r"
    first = invoke(runner, "audit", write_config(), "--out", out, "--format", "json")
    again = invoke(runner, "report", out, "--format", "json")
    assert again.exit_code == 0
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    a.pop("timings"), b.pop("timings")
    assert a == b


def test_existing_results_dir_is_not_clobbered(runner: CliRunner, write_config,
                                               tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert invoke(runner, "audit", write_config(), "--out", out).exit_code == 0
    again = invoke(runner, "audit", write_config(), "--out", out)
    assert again.exit_code == 2 and "already holds an audit" in again.stderr
    assert invoke(runner, "audit", write_config(), "--out", out, "--overwrite").exit_code == 0


def test_python_dash_m(write_config, tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "stabcheck", "--version"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and __version__ in proc.stdout
    # A fresh interpreter imports in the CLI's own order (catches circular imports).
    proc = subprocess.run([sys.executable, "-m", "stabcheck", "explain", "SC101"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "SC101 non-finite" in proc.stdout


def test_format_text_and_rich_decide_the_stderr_report(runner: CliRunner, write_config,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "r"
    plain = invoke(runner, "audit", write_config(), "--out", out, "--format", "text")
    assert plain.exit_code == 0 and "Verdict: PASSED" in plain.stderr
    assert "\x1b[" not in plain.stderr  # not a TTY and text asked for: no escape codes
    drawn = invoke(runner, "report", out, "--format", "rich")
    assert drawn.exit_code == 0
    assert "\x1b[" in drawn.stderr  # rich asked for: drawn although stderr is not a TTY
    again = invoke(runner, "report", out, "--format", "text")
    assert "\x1b[" not in again.stderr and "PASSED" in again.stderr


def test_help_lists_commands_in_whole_sentences(runner: CliRunner) -> None:
    listing = runner.invoke(cli, ["--help"], terminal_width=80).output
    commands = listing.split("Commands:")[1].strip().splitlines()
    assert len(commands) == 6
    for line in commands:
        assert not line.rstrip().endswith("..."), line
        assert line.rstrip().endswith("."), line


def test_verbose_audit_names_its_phases_cohorts_and_their_timings(runner: CliRunner,
                                                                   write_config,
                                                                   tmp_path: Path) -> None:
    path = write_config({"sweep": {"seeds": [0], "batch_sizes": [8, 16]}})
    result = invoke(runner, "audit", path, "--out", tmp_path / "r", "-v", "--format", "text")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    phases = [line[3:] for line in lines if line.startswith("-- ")]
    assert phases[:3] == ["building the model and data", "init checks, seed 0",
                          "curvature at init, seed 0"]
    assert phases[3].startswith("training 4 probes in 2 cohort(s): engine ")
    assert "executor" in phases[3]
    assert phases[4:] == ["cohort 1 of 2 (2 members: bs=8, lr 0.01 to 0.1, seed 0)",
                          "cohort 2 of 2 (2 members: bs=16, lr 0.01 to 0.1, seed 0)", "report"]
    assert sum(1 for line in lines if re.match(r"\[\d/4\] ", line)) == 4  # per-probe lines
    timings = [line for line in lines if line.startswith("timings: ")]
    assert len(timings) == 1 and lines.index(timings[0]) > lines.index("-- report")
    spent = re.findall(r"([a-z ]+) (\d+\.\d\d)s", timings[0][len("timings: "):])
    assert [name.strip(" ·") for name, _ in spent] == [
        "building", "init checks", "curvature at init", "training", "report"]
    assert all(float(seconds) >= 0 for _, seconds in spent)
    quiet = invoke(runner, "audit", path, "--out", tmp_path / "q", "--format", "text")
    assert not any(line.startswith("timings: ") for line in quiet.stderr.splitlines())
    # without -v, building is not announced: a config error there stays one line
    assert "-- building" not in quiet.stderr and "-- init checks, seed 0" in quiet.stderr


@pytest.mark.slow
def test_first_ctrl_c_says_what_it_waits_for_in_a_ci_log(tmp_path: Path) -> None:
    import os
    import signal

    from tests.test_interrupt import log_of, start, wait_for_probes, write

    config = write(tmp_path, {"step_sleep": 0.05})  # about 1 s per probe, 5 probes
    out = tmp_path / "r"
    proc = start(config, out, "--engine", "sequential", "--executor", "local")
    wait_for_probes(proc, out, 1)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log_of(out)
    lines = log_of(out).splitlines()
    said = [line for line in lines if line.startswith("stabcheck: stopping: ")]
    assert len(said) == 1, lines
    assert re.fullmatch(r"stabcheck: stopping: waiting up to 5s for probe lr=0\.0\d seed=0 "
                        r"bs=16 \(cohort 1 of 1\) to finish, then writing a partial report; "
                        r"Ctrl-C again to abort now\.", said[0]), said[0]
    assert "\x1b[" not in log_of(out)  # a CI log: plain lines


@pytest.fixture
def refuse_import(monkeypatch: pytest.MonkeyPatch):
    """``refuse_import("pyarrow")``: importing that package (or a submodule) fails from now."""
    import builtins

    real_import = builtins.__import__
    refused: list[str] = []

    def guarded(name: str, *args, **kwargs):
        if any(name == r or name.startswith(r + ".") for r in refused):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    return refused.append


@pytest.mark.parametrize(("flag", "value", "package", "needs"), [
    ("--traces", "traces.parquet", "pyarrow", "Parquet needs pyarrow"),
    ("--png", "plots", "matplotlib", "PNG plots need matplotlib"),
])
def test_missing_optional_dependency_is_one_line_before_any_probe(
        runner: CliRunner, write_config, tmp_path: Path, refuse_import, flag: str, value: str,
        package: str, needs: str) -> None:
    path = write_config()  # a valid config: without the check, its probes would train
    target = tmp_path / value
    refuse_import(package)
    result = invoke(runner, "audit", path, "--out", tmp_path / "r", flag, target)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"error: {flag} {target}: {needs}: pip install ")
    assert not (tmp_path / "r").exists() and not target.exists()  # nothing ran, nothing made
    assert result.stdout == ""


@pytest.mark.slow
def test_the_init_starter_comes_out_clean_on_its_first_run(runner: CliRunner,
                                                           tmp_path: Path) -> None:
    target = tmp_path / "stabcheck.yaml"
    assert invoke(runner, "init", target).exit_code == 0
    # as written, on one seed of three (4 probes instead of 24)
    result = invoke(runner, "audit", target, "--out", tmp_path / "r", "--seeds", "0",
                    "--format", "text", "-o", f"json={tmp_path / 'report.json'}")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    lowest = min(p["lr"] for p in report["probes"])
    assert {p["status"] for p in report["probes"] if p["lr"] == lowest} == {"healthy"}
    assert {p["status"] for p in report["probes"]} == {"healthy"}
    assert not [f for f in report["findings"] if f["severity"] != "info"]
    assert not [f for f in report["findings"] if f["code"] == "SC401"]  # no clip on most steps
    sigmas = [float(s) for s in re.findall(r"([\d.]+) sigma", result.stderr)]
    assert all(s < 1000 for s in sigmas), sigmas  # no z-score from a degenerate spread
