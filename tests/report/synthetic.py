"""A fully synthetic, deterministic audit result (no training) for golden-file tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stabcheck.config import AuditConfig
from stabcheck.journal import JournalContents
from stabcheck.result import AuditResult, build_result
from tests.conftest import TINY, deep_update
from tests.diagnose.helpers import decreasing, record

GOLDEN = Path(__file__).resolve().parent / "golden"
CONFIG_FILE = GOLDEN / "config.yaml"


def synthetic_result() -> AuditResult:
    """Two batch sizes × three LRs × two seeds with a spike, a NaN, a crash and a margin."""
    config = AuditConfig.model_validate(deep_update(TINY, {
        "name": "golden",
        "sweep": {"learning_rates": [0.01, 0.1, 1.0], "seeds": [0, 1], "batch_sizes": [32, 128]},
        "probe": {"steps": 120, "grad_clip": 10.0}, "target_lr": 0.08,
    })).model_dump(mode="json")
    records = []
    index = 0
    for bs in (32, 128):
        for lr in (0.01, 0.1, 1.0):
            for seed in (0, 1):
                loss = decreasing(120, seed=seed + 10 * index)
                kwargs: dict = {}
                if bs == 32 and lr == 0.1 and seed == 1:
                    loss[60] += 2.0  # a recovered spike: warning, unstable
                if bs == 32 and lr == 1.0:
                    loss = np.r_[loss[:40], [np.nan]]
                    kwargs = {"outcome": "nonfinite", "first_nonfinite_step": 40}
                r = record(loss, lr=lr, seed=seed, batch_size=bs, index=index, **kwargs)
                if bs == 32 and lr == 1.0:
                    r.nonfinite_what, r.nonfinite_kind = "loss", "NaN"
                    r.nonfinite_module = "layers.0.linear"
                if bs == 128 and lr == 1.0 and seed == 1:
                    r.outcome, r.steps_run = "error", 7
                    r.trace = {k: v[:7] for k, v in r.trace.items()}
                    r.error = {"type": "ValueError", "message": "bad <value> & \"quotes\"",
                               "where": "models.py:12 in forward"}
                r.wall_time_s = 1.0
                records.append(r)
                index += 1
    header = {"config": config, "config_path": str(CONFIG_FILE), "planned": len(records),
              "environment": {"stabcheck": "0.1.0", "torch": "2.13.0+cpu", "python": "3.11",
                              "platform": "Linux", "device": "cpu", "cuda": None}}
    contents = JournalContents(header=header, probes={r.key: r for r in records})
    return build_result(contents, timings={"wall_time_s": 12.0})
