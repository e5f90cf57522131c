"""The init checks measure what they claim on models built to show it."""

from __future__ import annotations

import math

import pytest

from stabcheck.config import load_config
from stabcheck.engine.initcheck import initial_checks
from stabcheck.problem import build_problem


def init_report(write_config, model_kwargs: dict, seed: int = 0) -> dict:
    loaded = load_config(write_config({"model": {"builtin": "mlp", "kwargs": model_kwargs}}))
    problem = build_problem(loaded)
    return initial_checks(problem, seed, problem.data.to(problem.device))


def test_report_shape_loss_and_gradients(write_config) -> None:
    report = init_report(write_config, {"in_features": 4, "hidden": [8, 8], "out_features": 3})
    assert report["num_classes"] == 3 and report["loss"] == "cross_entropy"
    assert report["initial_loss"] == pytest.approx(math.log(3), rel=0.3)
    assert [x["name"] for x in report["layers"]] == ["layers.0.linear", "layers.1.linear",
                                                     "head"]
    assert [x["size"] for x in report["layers"]] == [4 * 8 + 8, 8 * 8 + 8, 8 * 3 + 3]
    assert all(x["grad_norm"] > 0 and x["output_rms"] > 0 for x in report["layers"])
    # PyTorch's default Linear init is uniform: excess kurtosis about -1.2.
    assert all(-1.6 < x["weight_kurtosis"] < -0.8 for x in report["layers"])


def test_heavy_tailed_init_has_large_kurtosis(write_config) -> None:
    report = init_report(write_config, {"in_features": 4, "hidden": [64, 64],
                                        "out_features": 3, "init": "heavy_tailed"})
    assert max(x["weight_kurtosis"] for x in report["layers"]) > 3


def test_dead_relus_and_saturated_sigmoids(write_config, write_module) -> None:
    write_module("dead.py", """
        import torch
        from torch import nn

        def build(bias=-100.0, act="relu"):
            lin = nn.Linear(4, 16)
            with torch.no_grad():
                lin.bias.fill_(bias)
            return nn.Sequential(lin, nn.ReLU() if act == "relu" else nn.Sigmoid(),
                                 nn.Linear(16, 3))
    """)
    for kwargs, key, expected in (({"bias": -100.0}, "dead_fraction", 1.0),
                                  ({"bias": 0.0}, "dead_fraction", 0.0),
                                  ({"bias": 50.0, "act": "sigmoid"}, "saturated_fraction", 1.0)):
        loaded = load_config(write_config({"model": {"builtin": None,
                                                     "factory": "./dead.py:build",
                                                     "kwargs": kwargs}}))
        problem = build_problem(loaded)
        [act] = initial_checks(problem, 0, problem.data.to(problem.device))["activations"]
        assert act["name"] == "1" and act[key] == pytest.approx(expected, abs=0.07)


def test_user_model_that_fails_is_noted_not_fatal(write_config, write_module) -> None:
    write_module("bad.py", """
        from torch import nn

        CALLS = []

        class Bad(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 3)
            def forward(self, x):
                CALLS.append(1)
                if len(CALLS) > 1:  # the trial forward of build_problem is the first call
                    raise RuntimeError("boom")
                return self.lin(x)

        def build():
            return Bad()
    """)
    loaded = load_config(write_config({"model": {"builtin": None, "factory": "./bad.py:build",
                                                 "kwargs": {}}}))
    problem = build_problem(loaded)
    report = initial_checks(problem, 0, problem.data.to(problem.device))
    assert report["error"]["type"] == "RuntimeError" and report["error"]["message"] == "boom"
