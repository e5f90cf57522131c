"""Per-layer gradient norms leave the journal: --traces columns and the JSON probes' `layers`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stabcheck.cli import cli

DEEPER = {"model": {"builtin": "mlp",
                    "kwargs": {"in_features": 4, "hidden": [8, 8], "out_features": 3}}}
LAYERS = ["layers.0.linear", "layers.1.linear", "head"]  # its layers, in depth order


def audit_with_traces(config: Path, tmp_path: Path, traces: Path) -> tuple[dict, list[dict]]:
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["audit", str(config), "--out", str(out), "--format",
                                      "json", "--traces", str(traces)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    journal = [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()]
    return json.loads(result.stdout), [r for r in journal if "layer_grad_norms" in r]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_traces_export_has_one_column_per_layer(suffix: str, write_config, tmp_path: Path
                                                ) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    import pandas as pd

    config = write_config(DEEPER)
    traces = tmp_path / f"traces{suffix}"
    report, journal = audit_with_traces(config, tmp_path, traces)
    table = pd.read_csv(traces) if suffix == ".csv" else pd.read_parquet(traces)
    columns = [c for c in table.columns if c.startswith("layer_grad_norm:")]
    assert columns == [f"layer_grad_norm:{name}" for name in LAYERS]
    for record in journal:  # the per-step values are the journal's, probe by probe
        rows = table[table["probe"] == record["index"]].sort_values("step")
        assert len(rows) == record["steps_run"] > 0
        np.testing.assert_allclose(rows[columns].to_numpy(),
                                   np.array(record["layer_grad_norms"], dtype=float), rtol=1e-6)
    assert {p["index"] for p in report["probes"]} == set(table["probe"])


def test_json_probes_carry_a_compact_layer_summary(write_config, tmp_path: Path) -> None:
    config = write_config(DEEPER)
    report, journal = audit_with_traces(config, tmp_path, tmp_path / "t.csv")
    by_index = {r["index"]: np.array(r["layer_grad_norms"], dtype=float) for r in journal}
    for probe in report["probes"]:
        layers = probe["layers"]
        assert layers["names"] == LAYERS
        norms = by_index[probe["index"]]  # [steps, layers]
        for key, fn in (("min", np.min), ("median", np.median), ("max", np.max)):
            assert len(layers["grad_norm"][key]) == len(LAYERS)
            np.testing.assert_allclose(layers["grad_norm"][key], fn(norms, axis=0), rtol=1e-5)
        assert all(lo <= mid <= hi for lo, mid, hi in zip(
            layers["grad_norm"]["min"], layers["grad_norm"]["median"],
            layers["grad_norm"]["max"], strict=True))
    # compact: three numbers per layer, not one per step
    assert len(json.dumps(report["probes"][0]["layers"])) < 400
