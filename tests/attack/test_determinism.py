"""Three CPU runs of one audit give identical JSON reports apart from timings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.attack.helpers import TWO_PROBES, report, run
from tests.conftest import deep_update


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("timings", "wall_time_s", "time_s")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_three_cpu_runs_are_identical_except_timings(write_config, tmp_path: Path) -> None:
    path = write_config(deep_update(TWO_PROBES, {"sweep": {"learning_rates": [0.01, 3.0],
                                                           "seeds": [0, 1]}}))
    reports = []
    for i in range(3):
        result = run("audit", path, "--out", tmp_path / str(i), "--format", "json")
        assert result.exit_code in (0, 1), result.output
        reports.append(report(tmp_path / str(i)))
        assert json.loads(result.stdout)["probes"] == reports[-1]["probes"]
    first = _without_timings(reports[0])
    assert all(_without_timings(r) == first for r in reports[1:])
    assert {p["status"] for p in first["probes"]} >= {"healthy"}
