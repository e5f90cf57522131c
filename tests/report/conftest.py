"""A small real audit whose largest LR diverges, shared by the report tests."""

from __future__ import annotations

import pytest

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config


@pytest.fixture(scope="module")
def runner_audit(tmp_path_factory):
    import yaml

    from tests.conftest import TINY, deep_update

    root = tmp_path_factory.mktemp("audit")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY, {
        "data": {"builtin": "regression",
                 "kwargs": {"n_samples": 96, "n_features": 4, "n_targets": 3}},
        "loss": "mse",
        "sweep": {"learning_rates": [0.01, 0.1, 10.0], "seeds": [0, 1],
                  "batch_sizes": [16]},
        "probe": {"steps": 30, "grad_clip": 1e9}})), encoding="utf-8")
    result, _ = run_audit(load_config(path), AuditOptions(out_dir=root / "out"))
    return result
