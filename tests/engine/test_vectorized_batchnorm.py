"""BatchNorm in the vectorized engine: per-member running statistics, stacked like parameters
and updated in place under vmap, matching the sequential engine's traces and buffers."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from stabcheck.engine import EngineSettings
from stabcheck.engine.sequential import SequentialEngine, SequentialProbe
from stabcheck.engine.vectorized import VectorizedEngine, model_reason, select_engine
from stabcheck.engine.vectorized.stacked import CohortRun
from stabcheck.plan import plan_probes
from tests.engine.test_vectorized import CNN, PROBE, _assert_same, _problem, _run

BN_CNN: dict[str, Any] = {"model": {**CNN["model"],
                                    "kwargs": {**CNN["model"]["kwargs"], "norm": "batchnorm"}},
                          "data": CNN["data"]}
BN_MLP: dict[str, Any] = {"model": {"builtin": "mlp", "kwargs": {
    "in_features": 4, "hidden": [8, 8], "out_features": 3, "norm": "batchnorm"}}}
MOMENTUM = {"name": "sgd", "kwargs": {"momentum": 0.9}}


@pytest.mark.parametrize("model", [BN_MLP, BN_CNN], ids=["mlp", "cnn"])
def test_batchnorm_runs_vectorized_with_the_sequential_traces(write_config,
                                                              model: dict[str, Any]) -> None:
    problem, config = _problem(write_config, {
        **model, "optimizer": MOMENTUM, "probe": {**PROBE, "steps": 30, "flush_every": 10},
        "sweep": {"learning_rates": [0.005, 0.02], "seeds": [0, 1], "batch_sizes": [16]}})
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, VectorizedEngine), note
    _assert_same(_run(SequentialEngine(), problem, config), _run(engine, problem, config))


@pytest.mark.parametrize("grad_mode", ["sum", "vmap_grad"])
def test_each_member_keeps_its_own_running_statistics(write_config, grad_mode: str) -> None:
    problem, config = _problem(write_config, {
        **BN_CNN, "optimizer": MOMENTUM, "probe": {**PROBE, "steps": 8},
        "sweep": {"learning_rates": [0.01, 0.03], "seeds": [0, 1], "batch_sizes": [16]}})
    settings = EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    run = CohortRun(problem, probes, settings, problem.data, grad_mode=grad_mode)
    refs = [SequentialProbe(problem, spec, settings, problem.data) for spec in probes]
    for t in range(settings.steps):
        run.step(t)
        for ref in refs:
            ref.step(t)
    names = [n for n, _ in refs[0].model.named_buffers()]
    assert any(n.endswith("running_mean") for n in names)
    for pos, ref in enumerate(refs):
        for name in names:
            mine, theirs = run.consts[name][pos], ref.model.get_buffer(name)
            if theirs.is_floating_point():
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=name)
            else:  # num_batches_tracked
                assert int(mine) == int(theirs) == settings.steps
    # Members really differ: their statistics are their own, not one shared copy.
    mean = next(n for n in names if n.endswith("running_mean"))
    assert not torch.equal(run.consts[mean][0], run.consts[mean][1])
    # An unstacked member (curvature, replay) carries its statistics with it.
    snap = run.snapshot()
    probe = run.sequential_probe(snap, 1)
    torch.testing.assert_close(probe.model.get_buffer(mean), refs[1].model.get_buffer(mean),
                               rtol=1e-4, atol=1e-6)


def test_cumulative_batchnorm_still_falls_back_with_its_reason() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4, momentum=None))
    reason = model_reason(model)
    assert reason is not None and "momentum=None" in reason
    assert model_reason(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))) \
        is None
