"""Faults inside probes: each becomes that probe's status, and the audit goes on.

The user code in ``tests/fixtures/faults.py`` hangs, raises, runs out of memory or kills
its own process at chosen learning rates, batch sizes and steps.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config
from stabcheck.engine import EngineSettings, get_engine
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.executors import choose_executor
from stabcheck.executors.base import Interrupts, Job, run_cohorts
from stabcheck.executors.local import LocalExecutor
from stabcheck.executors.process import ProcessExecutor, hard_limit
from stabcheck.plan import make_cohorts, plan_probes
from stabcheck.problem import build_problem
from stabcheck.records import ProbeRecord
from tests.conftest import TINY, deep_update

FAULTS = Path(__file__).parent / "fixtures" / "faults.py"
LRS = [0.01, 0.03, 0.1]


def fault_config(tmp_path: Path, optimizer: dict[str, Any] | None = None,
                 cls: str = "FaultySGD", **updates: Any) -> Path:
    """A tiny config whose optimizer is a fault-injecting one from faults.py."""
    shutil.copy(FAULTS, tmp_path / "faults.py")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": LRS, "seeds": [0],
                                       "batch_sizes": [16]},
                             "probe": {"steps": 8, "flush_every": 4}})
    cfg["optimizer"] = {"name": f"./faults.py:{cls}", "kwargs": optimizer or {}}
    cfg = deep_update(cfg, updates)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def audit(path: Path, out: Path, **options: Any) -> tuple[Any, dict[str, Any]]:
    result, out_dir = run_audit(load_config(path), AuditOptions(out_dir=out, **options))
    return result, json.loads((out_dir / "report.json").read_text())


def by_lr(report: dict[str, Any]) -> dict[float, dict[str, Any]]:
    return {p["lr"]: p for p in report["probes"]}


# ------------------------------------------------------------------------------- hangs


def test_hang_inside_a_step_is_killed_and_marked_timeout(tmp_path: Path) -> None:
    path = fault_config(tmp_path, {"hang_lr": 0.03}, probe={"timeout_s": 1})
    started = time.monotonic()
    result, report = audit(path, tmp_path / "r", executor="process")
    elapsed = time.monotonic() - started
    probes = by_lr(report)
    assert probes[0.03]["status"] == "timeout"
    assert "inside a training step" in probes[0.03]["error"]["message"]
    # the audit went on in a fresh worker: the probes after the hang ran
    assert probes[0.01]["status"] == "healthy" and probes[0.1]["status"] == "healthy"
    assert any(f["code"] == "SC802" for f in report["findings"])
    # the hang cost its deadline, not the hour the user code asked for
    assert elapsed < 120
    assert result.exit_code == 1  # a timeout is an error finding; 2 of 3 finished


def test_slow_probe_is_stopped_between_steps_in_process(tmp_path: Path) -> None:
    # The local executor cannot stop a step, but the engine's own check between steps stops
    # a probe whose every step is slow, and keeps the steps it made.
    path = fault_config(tmp_path, {"slow_lr": 0.1}, probe={"timeout_s": 1, "steps": 20})
    _, report = audit(path, tmp_path / "r", executor="local")
    slow = by_lr(report)[0.1]
    assert slow["status"] == "timeout" and 1 <= slow["steps_run"] < 20
    assert by_lr(report)[0.01]["status"] == "healthy"


def test_hard_limit_leaves_the_engine_time_to_stop_first() -> None:
    assert hard_limit(None) is None
    assert hard_limit(1.0) == 2.0
    assert hard_limit(100.0) == pytest.approx(110.0)


# ------------------------------------------------------------------------ exceptions


@pytest.mark.parametrize("executor", ["local", "process"])
def test_user_exception_at_step_k_is_an_error_with_the_users_frame(tmp_path: Path,
                                                                   executor: str) -> None:
    path = fault_config(tmp_path, {"raise_lr": 0.03, "raise_at_step": 5})
    result, report = audit(path, tmp_path / "r", executor=executor)
    bad = by_lr(report)[0.03]
    assert bad["status"] == "error" and bad["steps_run"] == 5
    assert bad["error"]["type"] == "ValueError"
    assert bad["error"]["message"] == "user code rejects step 5"
    assert bad["error"]["where"].startswith(str(tmp_path / "faults.py"))
    assert bad["error"]["where"].endswith("in step")
    assert [by_lr(report)[lr]["status"] for lr in (0.01, 0.1)] == ["healthy", "healthy"]
    finding = next(f for f in report["findings"] if f["code"] == "SC801")
    assert "ValueError: user code rejects step 5" in finding["message"]
    # the journal holds the exception too
    journal = [json.loads(line) for line in (tmp_path / "r" / "probes.jsonl").open()]
    errors = [line["error"] for line in journal if line.get("outcome") == "error"]
    assert errors == [bad["error"]]
    assert result.exit_code == 1


# --------------------------------------------------------------------- worker death


def test_worker_killed_by_sigkill_marks_its_probe_and_the_audit_goes_on(tmp_path: Path) -> None:
    path = fault_config(tmp_path, {"kill_lr": 0.03})
    _, report = audit(path, tmp_path / "r", executor="process")
    dead = by_lr(report)[0.03]
    assert dead["status"] == "error"
    assert dead["error"]["type"] == "WorkerDied"
    assert "worker process died: signal 9 (SIGKILL)" in dead["error"]["message"]
    assert [by_lr(report)[lr]["status"] for lr in (0.01, 0.1)] == ["healthy", "healthy"]


@pytest.mark.slow
def test_process_executor_restarts_a_worker_per_lost_probe(tmp_path: Path) -> None:
    path = fault_config(tmp_path, {"kill_lr": 0.03, "hang_lr": 0.1}, probe={"timeout_s": 1},
                        sweep={"learning_rates": [0.01, 0.03, 0.1, 0.3]})
    loaded = load_config(path)
    problem = build_problem(loaded)
    settings = EngineSettings.from_config(loaded.config.probe)
    probes = plan_probes(loaded.config)
    keys = {p.index: f"k{p.index}" for p in probes}
    job = Job(loaded=loaded, problem=problem, data=problem.data, engine=SequentialEngine(),
              settings=settings, keys=keys)
    records: list[ProbeRecord] = []
    executor = ProcessExecutor()
    executor.run(job, make_cohorts(probes), records.append, lambda n: None, Interrupts())
    assert [(r.lr, r.outcome) for r in records] == [
        (0.01, "completed"), (0.03, "error"), (0.1, "timeout"), (0.3, "completed")]
    assert executor.workers_started == 3  # the first, one after the kill, one after the hang
    assert _children() == []  # every worker was reaped


CRASHING_ENGINE = """
from torch import nn

from stabcheck.engine import ENGINES
from stabcheck.engine.sequential import SequentialEngine, run_probe


class CrashingEngine(SequentialEngine):
    \"\"\"Runs a cohort's first probe, then fails as a buggy engine (or a dead device) would.\"\"\"

    name = "crashing"

    def run_cohort(self, problem, cohort, settings, keys, data, events):
        spec = cohort.probes[0]
        events.record(run_probe(problem, spec, settings, keys[spec.index], data, events))
        raise RuntimeError("engine bug")


ENGINES["crashing"] = CrashingEngine  # the worker imports this file with the model


def build():
    return nn.Linear(4, 3)
"""


@pytest.mark.slow
def test_an_exception_escaping_the_engine_in_a_worker_is_charged_to_one_probe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "crashing.py").write_text(CRASHING_ENGINE, encoding="utf-8")
    path = fault_config(tmp_path, sweep={"learning_rates": [0.01, 0.03, 0.1, 0.3]},
                        model={"builtin": None, "factory": "./crashing.py:build", "kwargs": {}})
    loaded = load_config(path)
    build_problem(loaded)  # imports crashing.py here too, registering the engine
    from stabcheck.engine import ENGINES

    monkeypatch.setitem(ENGINES, "crashing", ENGINES["crashing"])
    engine = get_engine("crashing")
    _, out_dir = run_audit(loaded, AuditOptions(out_dir=tmp_path / "r", executor="process",
                                                engine=engine))
    report = json.loads((out_dir / "report.json").read_text())
    assert [p["status"] for p in report["probes"]] == ["healthy", "error", "healthy", "error"]
    lost = report["probes"][1]["error"]
    assert lost["type"] == "RuntimeError"
    assert lost["message"] == "engine bug (the worker process could not go on)"
    assert lost["where"].startswith(str(tmp_path / "crashing.py"))


def _children(parent: int | None = None) -> list[int]:
    """Live child processes of this one (from /proc), resource tracker aside; for the
    workers' fork server (which lives on, to start the next audit's workers), its children,
    the workers themselves."""
    me, out = parent if parent is not None else os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z" and b"resource_tracker" not in cmdline:
            if b"multiprocessing.forkserver" in cmdline:
                out += _children(int(entry.name))
            else:
                out.append(int(entry.name))
    return out


# ---------------------------------------------------------------------- out of memory


def test_oom_is_marked_and_reported_by_batch_size_and_memory_is_released(
        tmp_path: Path) -> None:
    shutil.copy(FAULTS, tmp_path / "faults.py")
    cfg = deep_update(TINY, {"sweep": {"learning_rates": [0.01, 0.1], "seeds": [0],
                                       "batch_sizes": [8, 16, 32]},
                             "probe": {"steps": 6, "flush_every": 3}})
    cfg["model"] = {"factory": "./faults.py:OOMAbove", "kwargs": {"max_batch": 16}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result, report = audit(path, tmp_path / "r", executor="local")
    status = {(p["batch_size"], p["lr"]): p["status"] for p in report["probes"]}
    assert status == {(8, 0.01): "healthy", (8, 0.1): "healthy", (16, 0.01): "healthy",
                      (16, 0.1): "healthy", (32, 0.01): "oom", (32, 0.1): "oom"}
    assert report["summary"]["oom_batch_sizes"] == [32]
    oom = [f for f in report["findings"] if f["code"] == "SC803"]
    assert len(oom) == 1 and "batch size 32 ran out of memory in 2 probe(s)" in oom[0]["message"]
    # Every model a probe built (including the ones that hit OOM) was released.
    import sys

    user = next(m for n, m in sys.modules.items() if n.startswith("stabcheck_user_faults"))
    gc.collect()
    assert len(user.LIVE) == 0
    assert result.exit_code == 1


def _cuda_or_skip() -> Any:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
def test_real_cuda_oom_is_marked_and_its_memory_freed_for_the_next_probe(
        tmp_path: Path) -> None:
    torch = _cuda_or_skip()
    # Every probe holds 60% of the device; the one at lr=0.03 asks for 60% more and fails.
    # The probe after it can hold its 60% only if the failed probe's 60% was given back.
    path = fault_config(tmp_path, {"oom_lr": 0.03}, cls="HogSGD", probe={"device": "cuda"})
    _, report = audit(path, tmp_path / "r", executor="local")
    assert [by_lr(report)[lr]["status"] for lr in LRS] == ["healthy", "oom", "healthy"]
    assert report["summary"]["oom_batch_sizes"] == [16]
    assert torch.cuda.memory_allocated() < 0.1 * torch.cuda.get_device_properties(0).total_memory


@pytest.mark.gpu
def test_device_side_assert_does_not_poison_the_next_probes(tmp_path: Path) -> None:
    _cuda_or_skip()
    path = fault_config(tmp_path, {"hog_fraction": 0, "assert_lr": 0.01}, cls="HogSGD",
                        probe={"device": "cuda"})
    _, report = audit(path, tmp_path / "r", executor="process")
    assert by_lr(report)[0.01]["status"] == "error"
    assert [by_lr(report)[lr]["status"] for lr in (0.03, 0.1)] == ["healthy", "healthy"]


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize(("raising", "exit_code"), [([0.01, 0.03, 0.3], 3), ([0.03, 0.3], 1)])
def test_too_few_finished_probes_exit_3(tmp_path: Path, raising: list[float],
                                        exit_code: int) -> None:
    # 4 probes and min_finished_fraction 0.5: with 2 errors exactly half finished (enough to
    # judge: the errors fail it, exit 1); with 3 errors too few did (exit 3, never 0).
    path = fault_config(tmp_path, {"raise_lr": raising},
                        sweep={"learning_rates": [0.01, 0.03, 0.1, 0.3]})
    result, report = audit(path, tmp_path / "r")
    assert result.exit_code == exit_code and report["exit_code"] == exit_code
    assert sum(p["status"] == "error" for p in report["probes"]) == len(raising)
    if exit_code == 3:
        assert report["verdict"] == "not_carried_out"
        assert report["reason"].startswith("only 1 of 4 probes finished")


# ------------------------------------------------------------------ executors, engines


def test_choose_executor() -> None:
    import torch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_executor("auto", None, cpu).name == "local"
    assert choose_executor("auto", 5.0, cpu).name == "processes"
    assert choose_executor("auto", None, cuda).name == "processes"
    assert choose_executor("local", 5.0, cuda).name == "local"
    assert choose_executor("process", None, cpu).name == "process"  # the older name
    with pytest.raises(ValueError, match="unknown executor"):
        choose_executor("dask", None, cpu)


def test_engine_registry() -> None:
    assert get_engine("sequential").name == "sequential"
    assert get_engine("vectorized").name == "vectorized"
    with pytest.raises(ValueError, match="unknown engine 'warp'"):
        get_engine("warp")


def test_process_and_local_executors_give_the_same_report(tmp_path: Path) -> None:
    path = fault_config(tmp_path, {})
    _, local = audit(path, tmp_path / "a", executor="local")
    _, process = audit(path, tmp_path / "b", executor="process")
    assert strip_timings(local) == strip_timings(process)


def test_vectorized_cohorts_run_in_a_worker_as_they_do_in_process(write_config,
                                                                  tmp_path: Path) -> None:
    path = write_config({"sweep": {"learning_rates": [0.01, 0.1, 30.0], "seeds": [0, 1],
                                   "batch_sizes": [8]},
                         "probe": {"steps": 12, "flush_every": 5}})
    _, local = audit(path, tmp_path / "a", executor="local")
    _, process = audit(path, tmp_path / "b", executor="process")
    # (lr 30 runs away, so it is re-run sequentially from step 0: see docs/vectorized.md)
    assert {p["engine"] for p in process["probes"] if p["lr"] < 30} == {"vectorized"}
    assert any(p["status"] == "diverged" for p in process["probes"])  # the replay path too
    assert strip_timings(local) == strip_timings(process)


def test_an_engine_note_from_a_worker_reaches_the_report(write_config, write_module,
                                                         tmp_path: Path) -> None:
    write_module("flaky.py", """
        import multiprocessing
        from torch import nn
        class Flaky(nn.Linear):
            calls = 0
            def forward(self, x):
                # Counted in the worker only: the parent's init phase makes however many
                # forwards its curvature budget allows.
                Flaky.calls += multiprocessing.parent_process() is not None
                if Flaky.calls == 6:  # once, part-way through the worker's stacked run
                    raise RuntimeError("transient failure")
                return super().forward(x)
        def build():
            return Flaky(4, 3)
    """)
    path = write_config({"model": {"builtin": None, "factory": "./flaky.py:build", "kwargs": {}},
                         "probe": {"steps": 12, "flush_every": 5}})
    result, report = audit(path, tmp_path / "r", executor="process")
    assert any("RuntimeError: transient failure" in n for n in report["notes"]), report["notes"]
    assert {p["engine"] for p in report["probes"]} == {"sequential"}
    assert result.exit_code == 0


def strip_timings(report: Any) -> Any:
    """The report without wall-clock fields (the only thing allowed to differ)."""
    if isinstance(report, dict):
        return {k: strip_timings(v) for k, v in report.items()
                if k not in ("timings", "wall_time_s", "time_s")}
    if isinstance(report, list):
        return [strip_timings(v) for v in report]
    return report


# ------------------------------------------------------------------------ determinism


def test_two_cpu_runs_give_identical_reports_except_timings(write_config,
                                                            tmp_path: Path) -> None:
    path = write_config({"sweep": {"learning_rates": [0.01, 0.1, 3.0], "seeds": [0, 1],
                                   "batch_sizes": [8, 16]},
                         "probe": {"steps": 12, "flush_every": 5, "grad_clip": 1.0}})
    _, first = audit(path, tmp_path / "a")
    _, second = audit(path, tmp_path / "b")
    assert first["probes"][0]["timings"]["wall_time_s"] > 0  # timings exist (and may differ)
    assert strip_timings(first) == strip_timings(second)
    # the raw journals agree too, line for line, once wall times are dropped
    lines = [[strip_timings(json.loads(x)) for x in (d / "probes.jsonl").open()]
             for d in (tmp_path / "a", tmp_path / "b")]
    assert lines[0] == lines[1]


# ------------------------------------------------------------------ stopping on Ctrl-C


def test_stop_request_lets_the_running_probe_finish_and_starts_no_other(write_config) -> None:
    loaded = load_config(write_config({"sweep": {"learning_rates": [0.01, 0.1, 0.3]}}))
    problem = build_problem(loaded)
    settings = EngineSettings.from_config(loaded.config.probe)
    probes = plan_probes(loaded.config)
    keys = {p.index: str(p.index) for p in probes}
    records: list[ProbeRecord] = []
    stop = False

    def on_steps(n: int) -> None:
        nonlocal stop
        stop = True  # "Ctrl-C" during the first probe's first flush

    run_cohorts(SequentialEngine(), problem, make_cohorts(probes), settings, keys,
                problem.data, records.append, on_steps, lambda: stop)
    assert [r.index for r in records] == [0]  # the running probe finished; none other ran
    assert records[0].outcome == "completed" and records[0].steps_run == settings.steps


def test_second_sigint_forces_but_never_inside_a_critical_section() -> None:
    control = Interrupts(grace_s=60)
    with control.installed():
        os.kill(os.getpid(), signal.SIGINT)
        _let_signal_run()
        assert control.stop_requested and not control.forced
        with pytest.raises(KeyboardInterrupt), control.critical():
            os.kill(os.getpid(), signal.SIGINT)
            _let_signal_run()
            assert control.forced  # noted, but the block was not cut
            finished_block = True
        assert finished_block
        os.kill(os.getpid(), signal.SIGINT)  # a third is ignored: the report is being written
        _let_signal_run()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_grace_period_ends_in_a_forced_stop() -> None:
    control = Interrupts(grace_s=0.2)
    with control.installed(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        _let_signal_run()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert control.forced


def test_after_settle_no_ctrl_c_cuts_the_report_short() -> None:
    control = Interrupts(grace_s=0.2)
    with control.installed():
        os.kill(os.getpid(), signal.SIGINT)  # a late first Ctrl-C starts the grace timer
        _let_signal_run()
        control.settle()  # the probes are over; the report is being written
        time.sleep(0.5)  # past the grace period: the timer was cancelled
        os.kill(os.getpid(), signal.SIGINT)  # and a second Ctrl-C is ignored
        _let_signal_run()
        written = True
    assert written and control.stop_requested and not control.forced


def test_interrupts_do_nothing_outside_the_main_thread() -> None:
    seen: list[bool] = []

    def body() -> None:
        with Interrupts().installed():
            seen.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [True]


def test_local_executor_runs_everything_without_a_stop(write_config) -> None:
    loaded = load_config(write_config())
    problem = build_problem(loaded)
    probes = plan_probes(loaded.config)
    job = Job(loaded=loaded, problem=problem, data=problem.data, engine=SequentialEngine(),
              settings=EngineSettings.from_config(loaded.config.probe),
              keys={p.index: str(p.index) for p in probes})
    records: list[ProbeRecord] = []
    LocalExecutor().run(job, make_cohorts(probes), records.append, lambda n: None,
                        Interrupts())
    assert sorted(r.index for r in records) == [p.index for p in probes]


def _let_signal_run() -> None:
    for _ in range(100):  # Python runs the handler at the next bytecode boundary
        time.sleep(0.001)
