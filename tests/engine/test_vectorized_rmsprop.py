"""RMSprop in the vectorized engine: its stacked update (centred, momentum, weight decay,
alpha, eps) against ``torch.optim.RMSprop`` in the sequential engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from stabcheck.engine import EngineSettings
from stabcheck.engine.sequential import SequentialEngine, SequentialProbe
from stabcheck.engine.vectorized import VectorizedEngine, optimizer_reason, select_engine
from stabcheck.engine.vectorized.stacked import CohortRun
from stabcheck.plan import plan_probes
from tests.engine.test_vectorized import CNN, PROBE, _assert_same, _problem, _run

PLAIN = {"name": "rmsprop", "kwargs": {}}
CENTERED = {"name": "rmsprop", "kwargs": {"centered": True, "alpha": 0.9, "eps": 1e-6}}
MOMENTUM = {"name": "rmsprop", "kwargs": {"momentum": 0.9}}
EVERYTHING = {"name": "rmsprop", "kwargs": {"centered": True, "momentum": 0.5,
                                            "weight_decay": 1e-2, "alpha": 0.95}}
VARIANTS = [PLAIN, CENTERED, MOMENTUM, EVERYTHING]
IDS = ["plain", "centered", "momentum", "centered-momentum-decay"]


def _vectorized(records: dict[int, Any]) -> dict[int, Any]:
    """Every record stacked to the end (no member replayed or re-run sequentially, which would
    hide a wrong update behind the reference's own)."""
    assert {r.engine for r in records.values()} == {"vectorized"}
    assert not [note for r in records.values() for note in r.notes]
    return records


def _selected(problem: Any, config: Any) -> Any:
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, VectorizedEngine), note
    return engine


@pytest.mark.parametrize("optimizer", VARIANTS, ids=IDS)
def test_rmsprop_traces_match_sequential(write_config, optimizer: dict[str, Any]) -> None:
    problem, config = _problem(write_config, {
        "optimizer": optimizer, "probe": PROBE,
        "sweep": {"learning_rates": [0.001, 0.005], "seeds": [0, 1], "batch_sizes": [16]}})
    vec = _vectorized(_run(_selected(problem, config), problem, config))
    seq = _run(SequentialEngine(), problem, config)
    assert all(r.outcome == "completed" and r.steps_run == 50 for r in seq.values())
    _assert_same(seq, vec)


def test_rmsprop_on_a_cnn_with_warmup_clipping_and_two_batch_sizes(write_config) -> None:
    problem, config = _problem(write_config, {
        **CNN, "optimizer": EVERYTHING,
        "probe": {**PROBE, "steps": 30, "warmup_steps": 10, "grad_clip": 0.5},
        "sweep": {"learning_rates": [0.001, 0.003], "seeds": [0, 1], "batch_sizes": [16, 32]}})
    vec = _vectorized(_run(_selected(problem, config), problem, config))
    _assert_same(_run(SequentialEngine(), problem, config), vec)
    clipped = np.concatenate([r.series("clipped") for r in vec.values()])
    assert 0 < clipped.mean() < 1


@pytest.mark.parametrize("optimizer", [CENTERED, MOMENTUM], ids=["centered", "momentum"])
def test_a_member_handed_to_torch_carries_the_rmsprop_state(write_config,
                                                            optimizer: dict[str, Any]) -> None:
    # The hand-over behind every sequential replay: after 5 stacked steps, one member's
    # torch.optim.RMSprop gets the state that 5 sequential steps give it, and steps on alike.
    problem, config = _problem(write_config, {
        "optimizer": optimizer, "probe": {**PROBE, "steps": 8},
        "sweep": {"learning_rates": [0.002, 0.01], "seeds": [0, 1], "batch_sizes": [16]}})
    settings = EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    run = CohortRun(problem, probes, settings, problem.data)
    for t in range(5):
        run.step(t)
    member = 3
    handed = run.sequential_probe(run.snapshot(), member)
    ref = SequentialProbe(problem, probes[member], settings, problem.data)
    for t in range(5):
        ref.step(t)
    keys = {"square_avg", "step"} | ({"grad_avg"} if optimizer is CENTERED else
                                     {"momentum_buffer"})
    for mine, theirs in zip(handed.optimizer.param_groups[0]["params"],
                            ref.optimizer.param_groups[0]["params"], strict=True):
        a, b = handed.optimizer.state[mine], ref.optimizer.state[theirs]
        assert set(a) == set(b) == keys
        for key in keys:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-7, msg=key)
    for t in range(5, 8):
        handed.step(t)
        ref.step(t)
    for mine, theirs in zip(handed.params, ref.params, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_diverging_rmsprop_members_replay_to_the_same_first_nonfinite_step(
        write_config) -> None:
    problem, config = _problem(write_config, {
        "optimizer": MOMENTUM, "probe": {**PROBE, "steps": 40, "flush_every": 7},
        "sweep": {"learning_rates": [0.002, 1e30], "seeds": [0, 1], "batch_sizes": [16]}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(_selected(problem, config), problem, config)
    assert {r.lr for r in vec.values() if r.outcome == "nonfinite"} == {1e30}
    _assert_same(seq, vec)


@pytest.mark.parametrize("optimizer", [CENTERED, MOMENTUM], ids=["centered", "momentum"])
def test_float16_skipped_steps_keep_the_rmsprop_state(write_config,
                                                      optimizer: dict[str, Any]) -> None:
    # head_scale 300 overflows the scaled fp16 backward for the first steps: members skip
    # them on their own (the masked update), as GradScaler skips optimizer.step().
    model = {"builtin": "mlp", "kwargs": {"in_features": 4, "hidden": [8], "out_features": 3,
                                          "head_scale": 300.0}}
    problem, config = _problem(write_config, {
        "model": model, "optimizer": optimizer,
        "probe": {**PROBE, "steps": 30, "flush_every": 10, "dtype": "float16"},
        "sweep": {"learning_rates": [0.0003, 0.001], "seeds": [0, 1], "batch_sizes": [16]}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(rerun_runaways=False), problem, config)
    skipped = 0
    for index, a in seq.items():
        b = vec[index]
        assert b.engine == "vectorized" and (b.outcome, b.steps_run) == (a.outcome, a.steps_run)
        np.testing.assert_array_equal(b.series("skipped"), a.series("skipped"), a.label)
        np.testing.assert_allclose(b.series("loss"), a.series("loss"), rtol=0.1, atol=1e-6,
                                   err_msg=a.label)
        skipped += int(np.nansum(b.series("skipped")))
    assert skipped > 0


def test_options_it_does_not_implement_fall_back(write_config) -> None:
    problem, _ = _problem(write_config, {"optimizer": {"name": "rmsprop",
                                                       "kwargs": {"maximize": True}}})
    assert optimizer_reason(problem) == \
        "rmsprop option maximize=True has no vectorized implementation"
    for variant in VARIANTS:
        problem, _ = _problem(write_config, {"optimizer": variant})
        assert optimizer_reason(problem) is None
