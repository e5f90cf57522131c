"""Output of ``stabcheck audit --predict-only``: the LR ceiling predicted from init sharpness."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stabcheck.report.json_report import _finite


def _fmt(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "–"


def print_prediction(prediction: dict[str, Any], console: Console) -> None:
    """A table per batch size: init sharpness, predicted ceiling; then the noise scale."""
    seeds: dict[str, dict[str, Any]] = prediction["seeds"]
    ok = {s: r for s, r in seeds.items() if "error" not in r}
    console.print(Text.assemble(("stabcheck ", "bold"), f"· {prediction['name']} · predict only "
                                f"(no probe trained) · {prediction['device']} · "
                                f"{prediction['timings']['wall_time_s']:.1f}s"))
    for seed, report in seeds.items():
        if "error" in report:
            err = report["error"]
            console.print(f"seed {seed}: curvature could not be measured: {err.get('type')}: "
                          f"{err.get('message')}", markup=False)
    if not ok:
        return
    first = next(iter(ok.values()))
    if first.get("prediction"):
        console.print(f"{prediction['optimizer']}: init sharpness {_fmt(first['sharpness'])}; "
                      f"{first['prediction']}", markup=False)
    else:
        table = Table(title="Predicted LR ceiling from init sharpness", title_justify="left")
        table.add_column("batch size", justify="right")
        table.add_column("init sharpness (sharpest seed)", justify="right")
        table.add_column("predicted LR ceiling", justify="right")
        for bs, ceiling in prediction["predicted_lr_ceiling"].items():
            values = [r["by_batch_size"][bs]["sharpness"] for r in ok.values()]
            finite = [v for v in values if v is not None]
            table.add_row(bs, _fmt(max(finite) if finite else None), _fmt(ceiling))
        console.print(table)
        console.print(f"{prediction['optimizer']}: stable while the sharpness stays under "
                      f"{first['limit']}", markup=False)
    noise = [r["noise_scale"]["b_simple"] for r in ok.values()
             if r.get("noise_scale") and r["noise_scale"].get("b_simple") is not None]
    if noise:
        console.print(f"gradient noise scale B_simple ≈ {float(np.median(noise)):.4g} at init "
                      "(critical batch-size hint: beyond it, larger batches give diminishing "
                      "returns per example)", markup=False)
    console.print("The ceiling is 'stable while the sharpness stays as it is at init': "
                  "sharpness usually grows during training, so treat it as a first guess and "
                  "confirm it with the sweep.", style="dim", markup=False)
    target = prediction.get("target_lr")
    if target is not None:
        low = [bs for bs, c in prediction["predicted_lr_ceiling"].items()
               if c is not None and target > c]
        if low:
            console.print(f"target_lr {target:g} is above the predicted ceiling at batch size "
                          f"{', '.join(low)}", style="yellow", markup=False)


def render_json(prediction: dict[str, Any]) -> str:
    """Key-sorted JSON, non-finite numbers as null."""
    return json.dumps(_finite(prediction), indent=2, sort_keys=True, allow_nan=False) + "\n"
