"""The engine benchmark still runs (``--quick``): it prints a table, it asserts no timing."""

from __future__ import annotations

import pytest

from benchmarks import bench_engines


def test_quick_benchmark_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_engines.main(["--quick", "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "plain(a)" in out and "a/c" in out and "overhead" in out
    rows = [line for line in out.splitlines() if line.startswith("quickstart (quick)")]
    assert len(rows) == 2  # one grid row, one per-step overhead row
    assert rows[0].split()[2] == "2"  # probes column: 2 lrs x 1 seed x 1 batch size


def test_per_step_table_alone_in_thread_cpu_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_engines.main(["--quick", "--per-step", "--cpu-time", "--threads", "1",
                               "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "plain(a)" not in out and "thread CPU time" in out
    assert len([line for line in out.splitlines() if line.startswith("quickstart (quick)")]) == 1
