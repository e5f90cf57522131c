"""At the divergence boundary the vectorized engine gives the sequential engine's verdict.

There the dynamics are chaotic: the 1e-7 rounding differences of batched float32 kernels grow
to O(1) within ~10 steps (measured: tanh MLP, SGD lr 5.6, batch 32), so a stacked member could
recover where the plain loop diverges. A member whose loss ran away is re-run from step 0 by
the sequential engine; members at safe learning rates stay stacked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stabcheck.config import load_config
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine
from stabcheck.engine.vectorized import engine as vec_engine
from stabcheck.engine.vectorized.engine import RUNAWAY_NOTE, early_check_due, runaway
from stabcheck.problem import build_problem
from tests.engine.test_vectorized import _run

BOUNDARY = {
    "model": {"builtin": "mlp", "kwargs": {"in_features": 20, "hidden": [64, 64],
                                           "out_features": 4, "activation": "tanh"}},
    "data": {"builtin": "blobs", "kwargs": {"n_samples": 512, "n_features": 20,
                                            "n_classes": 4}},
    "optimizer": {"name": "sgd", "kwargs": {}},
    "sweep": {"learning_rates": [0.05, 5.6], "seeds": [0, 1, 2], "batch_sizes": [32]},
    "probe": {"steps": 80, "flush_every": 20, "device": "cpu"},
}


def test_runaway_rule() -> None:
    assert runaway(np.array([1.0, 0.9, 1.6]))
    assert not runaway(np.array([1.0, 1.4, 0.2]))
    assert not runaway(np.array([1.0]))


def test_boundary_verdicts_match_the_sequential_engine_exactly(write_config) -> None:
    loaded = load_config(write_config(BOUNDARY))
    problem = build_problem(loaded)
    seq = _run(SequentialEngine(), problem, loaded.config)
    vec = _run(VectorizedEngine(), problem, loaded.config)
    rerun = [r for r in vec.values() if RUNAWAY_NOTE in r.notes]
    assert {r.lr for r in rerun} == {5.6}  # every boundary member, no safe one
    assert all(r.engine == "vectorized" for r in vec.values() if r.lr == 0.05)
    for index, a in seq.items():
        b = vec[index]
        assert (b.outcome, b.steps_run, b.first_nonfinite_step) == \
            (a.outcome, a.steps_run, a.first_nonfinite_step)
        if b.lr == 5.6:  # the plain loop's trajectory, bit for bit
            np.testing.assert_array_equal(b.series("loss"), a.series("loss"))
        else:
            np.testing.assert_allclose(b.series("loss"), a.series("loss"), rtol=1e-4)


def test_early_check_schedule() -> None:
    due = [t for t in range(1, 101) if early_check_due(t, 50)]
    assert due == [1, 2, 4, 8, 16, 32, 64]  # never at a flush (50, 100)
    assert not early_check_due(16, 16)


def test_runaways_found_before_the_flush_give_the_flush_rule_records(write_config,
                                                                     monkeypatch) -> None:
    """A run-away found between flushes is re-run at once and leaves the stack; every record
    is the one the flush-only rule (the engine before the early check) gives."""
    config = {**BOUNDARY, "probe": {"steps": 60, "flush_every": 50, "device": "cpu"},
              "sweep": {"learning_rates": [0.05, 50.0], "seeds": [0, 1], "batch_sizes": [32]}}
    loaded = load_config(write_config(config))
    problem = build_problem(loaded)
    found: list[tuple[int, list[int]]] = []

    real = vec_engine.early_runaways

    def spy(run: Any, lo: int, t: int) -> list[int]:
        early = real(run, lo, t)
        found.append((t, early))
        return early

    monkeypatch.setattr(vec_engine, "early_runaways", spy)
    early = _run(VectorizedEngine(), problem, loaded.config)
    assert any(members and t < 50 for t, members in found)  # dropped before the first flush
    monkeypatch.setattr(vec_engine, "early_check_due", lambda done, every: False)
    flush_only = _run(VectorizedEngine(), problem, loaded.config)
    assert {r.lr for r in early.values() if RUNAWAY_NOTE in r.notes} == {50.0}
    for index, a in flush_only.items():
        b = early[index]
        assert (b.engine, b.outcome, b.steps_run, b.first_nonfinite_step, b.notes) == \
            (a.engine, a.outcome, a.steps_run, a.first_nonfinite_step, a.notes)
        np.testing.assert_array_equal(b.series("loss"), a.series("loss"))
        np.testing.assert_array_equal(b.series("grad_norm"), a.series("grad_norm"))
