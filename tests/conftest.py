"""Shared fixtures: tiny configs and user-code files that train in milliseconds."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

torch.set_num_threads(1)  # tiny models: threads only add noise and contention

TINY: dict[str, Any] = {
    "name": "tiny",
    "model": {"builtin": "mlp", "kwargs": {"in_features": 4, "hidden": [8], "out_features": 3}},
    "data": {"builtin": "blobs",
             "kwargs": {"n_samples": 96, "n_features": 4, "n_classes": 3}},
    "loss": "cross_entropy",
    "optimizer": {"name": "sgd", "kwargs": {"momentum": 0.9}},
    "sweep": {"learning_rates": [0.01, 0.1], "seeds": [0, 1], "batch_sizes": [16]},
    "probe": {"steps": 12, "flush_every": 5, "device": "cpu"},
}


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``updates`` merged in (sections merged, ``kwargs`` replaced)."""
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a tiny config (optionally changed) and return its path."""

    def write(updates: dict[str, Any] | None = None, name: str = "config.yaml",
              text: str | None = None) -> Path:
        path = tmp_path / name
        if text is not None:
            path.write_text(textwrap.dedent(text), encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(deep_update(TINY, updates or {}), sort_keys=False),
                            encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_module(tmp_path: Path):
    """Write a Python file of user code next to the config and return its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source), encoding="utf-8")
        return path

    return write


# Hypothesis: a fixed sequence of examples by default, so CI is reproducible; set
# HYPOTHESIS_PROFILE=explore locally to search with fresh random examples.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("default", derandomize=True, deadline=None)
_hypothesis_settings.register_profile("explore", max_examples=1000, deadline=None)
_hypothesis_settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "default"))
