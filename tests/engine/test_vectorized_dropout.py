"""Dropout in the vectorized engine: per-member masks, and no fallback because of dropout."""

from __future__ import annotations

from typing import Any

import numpy as np

from stabcheck.config import load_config
from stabcheck.engine import EngineSettings
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine, select_engine
from stabcheck.plan import plan_probes
from stabcheck.problem import build_problem
from tests.engine.test_vectorized import _run

DROPOUT_MLP = """
    from torch import nn

    def build(p=0.3):
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3))
"""


def _config(write_config, write_module, updates: dict[str, Any]) -> Any:
    write_module("drop.py", DROPOUT_MLP)
    return load_config(write_config({
        "model": {"builtin": None, "factory": "./drop.py:build", "kwargs": {}},
        "optimizer": {"name": "sgd", "kwargs": {}},
        "probe": {"steps": 30, "flush_every": 10, "device": "cpu"}, **updates}))


def test_dropout_alone_does_not_force_the_sequential_engine(write_config, write_module) -> None:
    loaded = _config(write_config, write_module, {})
    problem = build_problem(loaded)
    settings = EngineSettings.from_config(loaded.config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data,
                                 plan_probes(loaded.config))
    assert isinstance(engine, VectorizedEngine), note
    assert note is None


def test_dropout_masks_differ_per_member_and_training_matches_in_statistics(
        write_config, write_module) -> None:
    # Two probes of one seed at nearly the same LR: the same weights and batches at step 0,
    # so only their dropout masks can make their first losses differ.
    loaded = _config(write_config, write_module, {
        "sweep": {"learning_rates": [0.1, 0.1000001], "seeds": [0, 1], "batch_sizes": [16]}})
    problem = build_problem(loaded)
    vec = _run(VectorizedEngine(), problem, loaded.config)
    seq = _run(SequentialEngine(), problem, loaded.config)
    assert {r.engine for r in vec.values()} == {"vectorized"}
    by_seed: dict[int, list[float]] = {}
    for r in vec.values():
        by_seed.setdefault(r.seed, []).append(float(r.series("loss")[0]))
    assert all(len(v) == 2 and v[0] != v[1] for v in by_seed.values())
    # Different masks, the same training: both engines learn, to comparable losses.
    for index, a in seq.items():
        b = vec[index]
        assert a.outcome == b.outcome == "completed"
        la, lb = a.series("loss"), b.series("loss")
        assert np.isfinite(lb).all()
        assert lb[-10:].mean() < lb[:3].mean()
        assert abs(np.log(lb[-10:].mean() / la[-10:].mean())) < np.log(2.0)
