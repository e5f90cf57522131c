"""A fixed, synthetic audit for the HTML report tests and its golden file.

Hand-made probe records (no training, fully deterministic) go through the real journal →
diagnosis → verdict path (:func:`stabcheck.result.build_result`), so the report is rendered
from exactly what an audit would produce. The grid: batch sizes 32 and 128 × learning rates
0.01, 0.1, 1 × seeds 0 and 1, with

* healthy, decreasing losses at lr 0.01 and 0.1;
* a recovered loss spike (seed 1, lr 0.1, bs 32) and a gradient-norm spike with it;
* both seeds diverging to NaN at lr 1, bs 32 (loss blows up from step 38 on);
* one of two seeds diverging at lr 1, bs 128 (a fragile cell);
* sharpness tracked at lr 0.1, bs 128, crossing 2/η for seed 1;
* a note, grad_clip 2 and target_lr 0.05.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stabcheck.journal import JournalContents
from stabcheck.records import ProbeRecord
from stabcheck.result import AuditResult, build_result

STEPS = 80
LRS = (0.01, 0.1, 1.0)
SEEDS = (0, 1)
SIZES = (32, 128)
GRAD_CLIP = 2.0

CONFIG: dict[str, Any] = {
    "name": "synthetic",
    "model": {"builtin": "mlp"},
    "data": {"builtin": "blobs"},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "kwargs": {}},
    "sweep": {"learning_rates": list(LRS), "seeds": list(SEEDS), "batch_sizes": list(SIZES)},
    "probe": {"steps": STEPS, "grad_clip": GRAD_CLIP, "warmup_steps": 0, "flush_every": 10,
              "device": "cpu"},
    "target_lr": 0.05,
    "fail_on": "error",
    "thresholds": {},
}
ENVIRONMENT = {"stabcheck": "VERSION", "torch": "2.13.0", "python": "3.11.0",
               "platform": "Linux", "device": "cpu", "cuda": None}


def _listed(values: np.ndarray) -> list[float | None]:
    return [float(f"{v:.6g}") if np.isfinite(v) else None for v in values]


def _probe(index: int, bs: int, lr: float, seed: int) -> ProbeRecord:
    rng = np.random.default_rng(1000 * index + 7)
    t = np.arange(STEPS, dtype=float)
    speed = {0.01: 120.0, 0.1: 18.0, 1.0: 8.0}[lr]
    floor = 0.05 + 0.02 * seed
    loss = (floor + (2.3 - floor) * np.exp(-t / speed)) * (1 + 0.01 * rng.standard_normal(STEPS))
    grad = (0.6 + 1.5 * np.exp(-t / 25.0)) * (1 + 0.03 * rng.standard_normal(STEPS))
    outcome, first_bad = "completed", None
    if bs == 32 and lr == 0.1 and seed == 1:
        loss[45] *= 6.0  # a spike the probe recovers from
        loss[46] *= 2.0
        grad[45] *= 12.0
    diverges = lr == 1.0 and (bs == 32 or seed == 0)
    if diverges:
        first_bad = 52 + 3 * seed + (bs == 128) * 6
        blow = np.clip(t - 38, 0, None)
        loss = loss * np.exp(0.45 * blow)
        grad = grad * np.exp(0.5 * blow)
        loss[first_bad:] = np.nan
        grad[first_bad:] = np.nan
        outcome = "nonfinite"
    elif lr == 1.0:
        loss[30] *= 8.0  # the surviving seed of the fragile cell spikes and recovers
        loss[31] *= 2.5
    steps_run = first_bad + 1 if first_bad is not None else STEPS
    loss, grad = loss[:steps_run], grad[:steps_run]
    clipped = np.where(np.isfinite(grad), (grad > GRAD_CLIP).astype(float), np.nan)
    record = ProbeRecord(
        lr=lr, seed=seed, batch_size=bs, index=index, key=f"probe{index:02d}", outcome=outcome,
        steps_planned=STEPS, steps_run=steps_run,
        trace={"loss": _listed(loss), "grad_norm": _listed(grad), "clipped": _listed(clipped),
               "update_ratio": [1e-3] * steps_run, "param_norm": [10.0] * steps_run,
               "lr": [lr] * steps_run, "skipped": [0.0] * steps_run},
        first_nonfinite_step=first_bad, nonfinite_what="loss" if diverges else None,
        nonfinite_kind="nan" if diverges else None,
        nonfinite_module="<loss function>" if diverges else None,
        wall_time_s=0.5)
    if bs == 128 and lr == 0.1:
        steps = [0, 20, 40, 60]
        sharp = [4.0, 11.0, 17.5 + 4 * seed, 19.0 + 6 * seed]
        record.curvature = {"steps": steps, "sharpness": sharp, "limit": [2 / lr] * 4,
                            "eos_ratio": [s * lr / 2 for s in sharp], "rule": "sgd"}
    return record


def records() -> list[ProbeRecord]:
    """The synthetic probes, in plan order."""
    out = []
    for bs in SIZES:
        for lr in LRS:
            for seed in SEEDS:
                out.append(_probe(len(out), bs, lr, seed))
    return out


def synthetic_result() -> AuditResult:
    """The synthetic audit's result, built like ``stabcheck report`` builds one."""
    probes = records()
    contents = JournalContents(
        header={"config": CONFIG, "planned": len(probes), "config_path": "config.yaml",
                "environment": ENVIRONMENT},
        probes={r.key: r for r in probes},
        events=[{"kind": "note", "message": "synthetic audit: records made by hand, no "
                 "training"}])
    return build_result(contents, timings={"wall_time_s": 12.5})
