"""The start-up benchmark still runs (``--quick``): it prints a table, it asserts no timing."""

from __future__ import annotations

import pytest

from benchmarks import bench_startup


@pytest.mark.slow  # a real audit and a dozen fresh interpreters: about a minute when loaded
def test_quick_startup_benchmark_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_startup.main(["--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("load average")
    rows = {line.split("  ")[0].strip() for line in out.splitlines()[2:-1]}
    assert rows == {"--version", "--help", "audit --help", "report"}
