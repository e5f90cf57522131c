"""Independent cohorts in parallel on a CPU: when ``auto`` does it, where the workers come from
(a fork server preloaded with torch), and that the answers are those of the in-process run."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config
from stabcheck.executors import PARALLEL_MIN_PROBE_STEPS, choose_executor, parallel_workers
from stabcheck.executors.local import LocalExecutor
from stabcheck.executors.process import ProcessExecutor
from stabcheck.executors.worker import worker_context
from stabcheck.journal import read_journal
from tests.executors.test_scale_out import GRID, comparable

CPU = torch.device("cpu")
ENOUGH = PARALLEL_MIN_PROBE_STEPS


def test_parallel_only_with_two_cohorts_two_busy_cores_and_enough_work() -> None:
    busy = {"cores": 2, "load": 2.0}
    assert parallel_workers(CPU, cohorts=2, probe_steps=ENOUGH, **busy) == 2
    assert parallel_workers(CPU, cohorts=4, probe_steps=ENOUGH, **busy) == 2  # one per core
    assert parallel_workers(CPU, cohorts=3, probe_steps=ENOUGH, cores=8, load=8.0) == 3
    assert parallel_workers(CPU, cohorts=1, probe_steps=10 * ENOUGH, **busy) is None
    assert parallel_workers(CPU, cohorts=2, probe_steps=ENOUGH - 1, **busy) is None
    assert parallel_workers(CPU, cohorts=2, probe_steps=ENOUGH, cores=1, load=4.0) is None
    assert parallel_workers(torch.device("cuda"), cohorts=2, probe_steps=ENOUGH, **busy) is None
    # an idle machine: torch's own threads do as well, without the workers' start-up
    assert parallel_workers(CPU, cohorts=2, probe_steps=10 * ENOUGH, cores=2, load=1.5) is None


def test_auto_picks_workers_on_a_busy_multi_core_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.3, 0.3))
    assert isinstance(choose_executor("auto", None, CPU, cohorts=2, probe_steps=ENOUGH),
                      LocalExecutor)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    spread = choose_executor("auto", None, CPU, cohorts=2, probe_steps=ENOUGH)
    assert isinstance(spread, ProcessExecutor) and spread.workers == 2
    assert isinstance(choose_executor("auto", None, CPU, cohorts=2, probe_steps=ENOUGH - 1),
                      LocalExecutor)
    assert isinstance(choose_executor("auto", None, CPU, cohorts=1, probe_steps=10 * ENOUGH),
                      LocalExecutor)
    # a time limit keeps its own rule (one worker that can be replaced), --workers wins
    timed = choose_executor("auto", 5.0, CPU, cohorts=2, probe_steps=ENOUGH)
    assert isinstance(timed, ProcessExecutor) and timed.workers is None
    assert choose_executor("auto", None, CPU, workers=1, cohorts=2,  # type: ignore[union-attr]
                           probe_steps=ENOUGH).workers == 1
    assert isinstance(choose_executor("local", None, CPU, cohorts=2, probe_steps=ENOUGH),
                      LocalExecutor)


def test_workers_fork_from_a_preloaded_server_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    if sys.platform.startswith("linux"):
        assert worker_context().get_start_method() == "forkserver"
    monkeypatch.setenv("STABCHECK_WORKER_START", "spawn")
    assert worker_context().get_start_method() == "spawn"
    assert multiprocessing.get_start_method(allow_none=True) in (None, "fork", "forkserver",
                                                                  "spawn")


def write_grid(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(GRID, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_parallel_records_equal_the_in_process_ones_field_by_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: str) -> None:
    monkeypatch.setenv("STABCHECK_WORKER_START", start)
    config = load_config(write_grid(tmp_path))
    _, local_dir = run_audit(config, AuditOptions(out_dir=tmp_path / "local",
                                                  executor=LocalExecutor()))
    executor = ProcessExecutor(workers=2)
    _, spread_dir = run_audit(config, AuditOptions(out_dir=tmp_path / "spread",
                                                   executor=executor))
    assert executor.workers_started == 2
    assert comparable(spread_dir) == comparable(local_dir)

    def by_key(out: Path) -> dict[str, dict[str, object]]:
        return {key: {k: v for k, v in rec.to_dict().items()
                      if "time" not in k and not k.endswith("_s")}
                for key, rec in read_journal(out).probes.items()}

    local, spread = by_key(local_dir), by_key(spread_dir)
    assert len(local) == 16 and local.keys() == spread.keys()
    for key in local:  # every journaled field of every probe record, traces included
        assert spread[key] == local[key], key


def test_a_worker_sees_the_audits_environment_of_now(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork server is started once; a worker forked later gets the audit's current
    environment and directory, as a spawned one would."""
    (tmp_path / "envmodel.py").write_text(
        "import os, torch\n"
        "def model():\n"
        "    assert os.environ['STABCHECK_TEST_MARK'] == 'now', os.environ.get("
        "'STABCHECK_TEST_MARK')\n"
        "    assert os.getcwd() == os.environ['STABCHECK_TEST_CWD']\n"
        "    return torch.nn.Linear(4, 3)\n", encoding="utf-8")
    cfg = yaml.safe_load(yaml.safe_dump(GRID))
    cfg["model"] = {"factory": "./envmodel.py:model"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    ProcessExecutor().prepare()  # the server runs already, with the old environment
    monkeypatch.setenv("STABCHECK_TEST_MARK", "now")
    monkeypatch.setenv("STABCHECK_TEST_CWD", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    executor = ProcessExecutor(workers=2)
    _, out = run_audit(load_config(tmp_path / "config.yaml"),
                       AuditOptions(out_dir=tmp_path / "out", executor=executor))
    assert executor.workers_started == 2
    records = list(read_journal(out).probes.values())
    assert len(records) == 16
    assert all(rec.outcome != "error" for rec in records), [rec.error for rec in records]
