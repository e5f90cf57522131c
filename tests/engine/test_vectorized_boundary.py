"""At the divergence boundary the vectorized engine gives the sequential engine's verdict.

There the dynamics are chaotic: the 1e-7 rounding differences of batched float32 kernels grow
to O(1) within ~10 steps (measured: tanh MLP, SGD lr 5.6, batch 32), so a stacked member could
recover where the plain loop diverges. A member whose loss ran away is re-run from step 0 by
the sequential engine; members at safe learning rates stay stacked.
"""

from __future__ import annotations

import numpy as np

from stabcheck.config import load_config
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine
from stabcheck.engine.vectorized.engine import RUNAWAY_NOTE, runaway
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
