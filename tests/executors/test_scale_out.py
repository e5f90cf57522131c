"""Scale-out: cohorts spread over workers (processes) and Ray tasks give the same answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config
from stabcheck.errors import StabcheckError
from stabcheck.executors import choose_executor, get_executor
from stabcheck.executors.process import ProcessExecutor, plan_lanes
from stabcheck.executors.ray import check_resources
from stabcheck.plan import Cohort, ProbeSpec
from tests.conftest import TINY, deep_update

# Four cohorts: four batch sizes, each with two learning rates x two seeds.
GRID = deep_update(TINY, {"sweep": {"learning_rates": [0.01, 0.3], "seeds": [0, 1],
                                    "batch_sizes": [8, 16, 24, 32]},
                          "probe": {"steps": 6, "flush_every": 3}})


def cohort(batch_size: int, n: int, start: int = 0) -> Cohort:
    return Cohort(batch_size, tuple(ProbeSpec(start + i, 0.1, 0, batch_size)
                                    for i in range(n)))


def test_lanes_spread_cohorts_by_load_and_pin_gpus() -> None:
    cohorts = [cohort(8, 4), cohort(16, 1, 4), cohort(24, 2, 5), cohort(32, 1, 7)]
    lanes = plan_lanes(cohorts, torch.device("cpu"), 2, 0)
    assert [d for d, _ in lanes] == ["cpu", "cpu"]
    assert sorted(sum(len(c.probes) for c in lane) for _, lane in lanes) == [4, 4]
    assert sorted(c.batch_size for _, lane in lanes for c in lane) == [8, 16, 24, 32]
    # CUDA without an index: one worker per visible GPU, each pinned to its own device
    gpu_lanes = plan_lanes(cohorts, torch.device("cuda"), None, 3)
    assert [d for d, _ in gpu_lanes] == ["cuda:0", "cuda:1", "cuda:2"]
    # an explicit device index, or no more cohorts than workers, caps the workers
    assert len(plan_lanes(cohorts, torch.device("cuda:1"), None, 3)) == 1
    assert len(plan_lanes(cohorts[:1], torch.device("cpu"), 4, 0)) == 1
    assert plan_lanes([], torch.device("cpu"), 2, 0) == []


def test_executor_names_and_options() -> None:
    assert get_executor("process").name == "process"  # the older name still works
    assert isinstance(get_executor("process"), ProcessExecutor)
    processes = choose_executor("auto", None, torch.device("cpu"), workers=2)
    assert isinstance(processes, ProcessExecutor) and processes.workers == 2
    assert choose_executor("auto", None, torch.device("cpu"), ray_address="auto").name == "ray"
    with pytest.raises(ValueError, match="--workers applies to"):
        get_executor("local", workers=2)
    with pytest.raises(ValueError, match="--ray-address applies to"):
        get_executor("processes", ray_address="auto")


def test_a_gpu_audit_on_a_cpu_only_ray_cluster_fails_at_once() -> None:
    with pytest.raises(StabcheckError, match="has no GPU") as info:
        check_resources({"CPU": 8.0, "memory": 1e9}, gpu=True)
    assert info.value.exit_code == 3
    check_resources({"CPU": 2.0}, gpu=False)
    check_resources({"CPU": 2.0, "GPU": 1.0}, gpu=True)


def comparable(out_dir: Path) -> dict[str, Any]:
    """The report without what legitimately differs between runs: timings and places."""
    report = json.loads((out_dir / "report.json").read_text())

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if "time" not in k and not k.endswith("_s") and k not in
                    ("results_dir", "started_at", "finished_at", "created", "executor")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    report = strip(report)
    report["probes"] = sorted(report["probes"], key=lambda p: (p["batch_size"], p["lr"],
                                                              p["seed"]))
    return report


def run(tmp_path: Path, name: str, **options: Any) -> dict[str, Any]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(GRID, sort_keys=False), encoding="utf-8")
    _, out_dir = run_audit(load_config(path), AuditOptions(out_dir=tmp_path / name, **options))
    return comparable(out_dir)


def test_processes_with_two_workers_match_local(tmp_path: Path) -> None:
    local = run(tmp_path, "local", executor="local")
    executor = ProcessExecutor(workers=2)
    spread = run(tmp_path, "processes", executor=executor)
    assert executor.workers_started == 2  # the four cohorts really went to two workers
    assert len(local["probes"]) == 16
    assert spread == local


@pytest.mark.slow
def test_local_processes_and_ray_give_identical_reports(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    local = run(tmp_path, "local", executor="local")
    processes = run(tmp_path, "processes", executor="processes", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run(tmp_path, "ray", executor="ray")
    finally:
        ray.shutdown()
    assert local == processes == on_ray
