"""Curvature against exact answers: sharpness, stability limits, noise scale, Lipschitz bound."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from stabcheck.audit import audit
from stabcheck.builtins.data import blobs, regression
from stabcheck.builtins.models import cnn, mlp, transformer
from stabcheck.cli import cli
from stabcheck.config import load_config
from stabcheck.diagnose import Context
from stabcheck.diagnose import curvature as diag
from stabcheck.engine import EngineSettings
from stabcheck.engine.curvature import (
    CurvatureTracker,
    init_curvature,
    lipschitz_bound,
    measure_curvature,
    noise_scale,
    spectral_norm,
    stability_rule,
)
from stabcheck.engine.sequential import run_probe
from stabcheck.plan import ProbeSpec
from stabcheck.problem import TensorData, _builtin_criterion, build_problem, make_loss_fn
from stabcheck.records import ProbeRecord
from stabcheck.thresholds import Thresholds

N, D = 256, 16
LINEAR: dict[str, Any] = {
    "name": "linreg",
    "model": {"builtin": "mlp", "kwargs": {"in_features": D, "hidden": [], "out_features": 1,
                                           "bias": False}},
    "data": {"builtin": "regression", "kwargs": {"n_samples": N, "n_features": D,
                                                 "condition_number": 10.0}},
    "loss": "mse",
    "sweep": {"seeds": [0], "batch_sizes": [N]},  # one batch = the whole dataset: plain GD
}
MSE = make_loss_fn("mse", _builtin_criterion("mse"), "labels")
CE = make_loss_fn("cross_entropy", _builtin_criterion("cross_entropy"), "labels")


def exact_linear_sharpness() -> float:
    # torch's MSELoss averages over the n samples (one target each): L = 1/n sum (x_i w - y_i)^2,
    # so H = 2/n X^T X exactly, whatever w is.
    x, _ = regression(n_samples=N, n_features=D, condition_number=10.0)
    return float(torch.linalg.eigvalsh(2.0 / N * x.double().T @ x.double()).max())


def test_linear_regression_sharpness_within_2_percent() -> None:
    x, y = regression(n_samples=N, n_features=D, condition_number=10.0)
    model = mlp(in_features=D, hidden=[], out_features=1, bias=False)
    m = measure_curvature(model, MSE, (x, y), torch.optim.SGD(model.parameters(), lr=0.1))
    exact = exact_linear_sharpness()
    assert m["sharpness"] == pytest.approx(exact, rel=0.02)
    assert m["eos_ratio"] is None  # no lr given, no ratio
    m = measure_curvature(model, MSE, (x, y), torch.optim.SGD(model.parameters(), lr=0.1),
                          lr=0.5)
    assert m["limit"] == pytest.approx(2 / 0.5)
    assert m["eos_ratio"] == pytest.approx(0.5 * exact / 2, rel=0.02)


@pytest.mark.parametrize(("optimizer", "constant"), [
    ({"name": "sgd", "kwargs": {}}, 2.0),                     # gradient descent: 2/lambda
    ({"name": "sgd", "kwargs": {"momentum": 0.9}}, 3.8),     # heavy ball: (2+2*beta)/lambda
])
def test_gradient_descent_limit_on_exact_hessian(write_config, tmp_path: Path,
                                                  optimizer: dict[str, Any],
                                                  constant: float) -> None:
    exact = exact_linear_sharpness()
    boundary = constant / exact
    below, above = float(f"{0.9 * boundary:.6g}"), float(f"{1.1 * boundary:.6g}")
    config = write_config({**LINEAR, "optimizer": optimizer,
                           "sweep": {**LINEAR["sweep"], "learning_rates": [below, above]},
                           "probe": {"steps": 120, "curvature_every": 30, "flush_every": 20}})
    result = audit(config, out_dir=tmp_path / "out").report
    by_lr = {p.record.lr: p for p in result.diagnosis.probes}
    healthy, beyond = by_lr[below], by_lr[above]
    assert healthy.status == "healthy", [f.message for f in healthy.findings]
    assert beyond.status in ("diverged", "unstable")  # past the limit is never healthy
    assert any(f.code == "SC701" for f in beyond.findings)  # the ratio is measured, too
    ratios = [r for r in beyond.record.curvature["eos_ratio"] if r is not None]
    assert ratios and ratios[0] == pytest.approx(1.1, rel=0.03)
    ceiling = result.diagnosis.summary.curvature.by_batch_size[str(N)]
    assert ceiling.predicted_lr_ceiling == pytest.approx(boundary, rel=0.10)
    assert ceiling.observed_max_stable_lr == below
    assert ceiling.observed_min_diverged_lr == above


def _flat_hessian(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = math.prod(shape)
            params[name] = theta[i:i + k].view(shape)
            i += k
        logits = torch.func.functional_call(net, params, (x,))
        return torch.nn.functional.cross_entropy(logits, y)

    return torch.autograd.functional.hessian(loss, flat)


def mlp_case(activation: str, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor,
                                                  torch.Tensor]:
    """A small MLP on blobs and the dense spectrum of its loss Hessian (ascending)."""
    x, y = blobs(n_samples=64, n_features=4, n_classes=3)
    torch.manual_seed(seed)
    net = mlp(in_features=4, hidden=[8, 8], out_features=3, activation=activation)
    return net, x, y, torch.linalg.eigvalsh(_flat_hessian(net, x, y).double())


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlp_sharpness_matches_autograd_hessian(activation: str, seed: int) -> None:
    net, x, y, spectrum = mlp_case(activation, seed)
    exact = float(spectrum.max())
    m = measure_curvature(net, CE, (x, y), torch.optim.SGD(net.parameters(), lr=0.1),
                          method="power")  # the default, Lanczos: tests/engine/test_lanczos.py
    # These Hessians are indefinite with |lambda_min| close to lambda_max (tanh seed 0:
    # +1.56 / -1.60), which plain power iteration alone gets wrong; the shifted pass does not.
    assert m["sharpness"] == pytest.approx(exact, rel=0.02)


class _Mean(torch.nn.Module):
    """loss = mean_i 0.5 |w - x_i|^2: per-example gradient w - x_i, so Sigma = cov(x)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.w - x).square().sum(dim=1).mean()


def test_noise_scale_within_25_percent_of_truth() -> None:
    g = torch.Generator().manual_seed(0)
    dim, n = 64, 4096
    mean = torch.full((dim,), 0.25)
    x = mean + torch.randn(n, dim, generator=g) * torch.linspace(0.5, 1.5, dim)
    model = _Mean(dim)
    # Ground truth on this finite dataset (batches are drawn from it with replacement):
    grad = model.w.detach() - x.mean(0)                       # full-batch gradient G
    trace = float(((x - x.mean(0)) ** 2).sum(1).mean())       # tr(Sigma), population form
    truth = trace / float(grad.square().sum())
    assert 5 < truth < 100  # the problem is in the regime the two batch sizes resolve

    def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        return m(*batch)

    est = noise_scale(model, loss_fn, TensorData((x,)), 8, 256)
    assert est["b_simple"] == pytest.approx(truth, rel=0.25)
    assert est["trace_sigma"] == pytest.approx(trace, rel=0.25)


def test_spectral_norm_and_lipschitz_bound() -> None:
    torch.manual_seed(0)
    net = mlp(in_features=6, hidden=[10, 7], out_features=3)
    exact = [float(torch.linalg.matrix_norm(p.detach(), ord=2))
             for p in net.parameters() if p.dim() == 2]
    for p, sigma in zip([p for p in net.parameters() if p.dim() == 2], exact, strict=True):
        assert spectral_norm(p) == pytest.approx(sigma, rel=1e-3)
    bound = lipschitz_bound(net)
    assert bound["lipschitz"] == pytest.approx(math.prod(exact), rel=3e-3)
    # The bound really bounds this ReLU net's amplification of input changes.
    x = torch.randn(200, 6)
    dx = 1e-3 * torch.randn(200, 6)
    with torch.no_grad():
        gain = (net(x + dx) - net(x)).norm(dim=1) / dx.norm(dim=1)
    assert float(gain.max()) <= bound["lipschitz"]


def test_stability_rules_of_the_optimizers() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    gd = stability_rule(torch.optim.SGD(p, lr=0.1))
    assert gd.kind == "gd" and gd.limit(0.1) == pytest.approx(20.0)
    hb = stability_rule(torch.optim.SGD(p, lr=0.1, momentum=0.5))
    assert hb.kind == "heavy_ball" and hb.ceiling(3.0) == pytest.approx(1.0)
    nest = stability_rule(torch.optim.SGD(p, lr=0.1, momentum=0.5, nesterov=True))
    assert nest.ceiling(1.0) == pytest.approx(3.0 / 2.0)
    adam = stability_rule(torch.optim.Adam(p, lr=0.1))
    assert adam.preconditioned and adam.limit(1.0) == pytest.approx(38.0)  # Cohen et al. 2022
    assert stability_rule(torch.optim.Adagrad(p, lr=0.1)).limit(0.1) is None

    # The limits are the real ones: on a 1-D quadratic with curvature 1, 2% below the
    # ceiling converges and 2% above it blows up, with PyTorch's own update rules.
    for opt, kwargs in ((torch.optim.SGD, {}), (torch.optim.SGD, {"momentum": 0.9}),
                        (torch.optim.SGD, {"momentum": 0.9, "nesterov": True})):
        ceiling = stability_rule(opt(p, lr=1.0, **kwargs)).ceiling(1.0)
        assert ceiling is not None
        for factor, stable in ((0.98, True), (1.02, False)):
            w = torch.nn.Parameter(torch.ones(1))
            o = opt([w], lr=ceiling * factor, **kwargs)
            for _ in range(2000):
                o.zero_grad()
                (0.5 * w.square()).sum().backward()
                o.step()
            assert (abs(float(w.detach())) < 1e-3) is stable, (opt, kwargs, factor)


NOISY_MODEL = """
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(16, 3))
"""


def test_tracking_leaves_the_loss_trace_unchanged(write_config, write_module) -> None:
    write_module("noisy.py", NOISY_MODEL)  # dropout draws RNG, BatchNorm updates buffers
    loaded = load_config(write_config({
        "model": {"builtin": None, "factory": "./noisy.py:build", "kwargs": {}},
        "optimizer": {"name": "adam", "kwargs": {}},
        "probe": {"steps": 12, "flush_every": 5}}))
    problem = build_problem(loaded)
    spec = ProbeSpec(batch_size=16, lr=0.01, seed=3)
    plain = EngineSettings.from_config(loaded.config.probe)
    tracked = EngineSettings(**{**plain.__dict__, "curvature_every": 4})
    a = run_probe(problem, spec, plain, "k")
    b = run_probe(problem, spec, tracked, "k")
    assert a.trace == b.trace and a.layer_grad_norms == b.layer_grad_norms
    curv = b.curvature
    assert curv is not None and curv["error"] is None
    assert curv["steps"] == [0, 4, 8, 12]
    assert all(s is not None and s > 0 for s in curv["sharpness"])
    # Adam: no second moment before step 0, then the preconditioned sharpness is measured.
    assert curv["preconditioned"][0] is None and curv["eos_ratio"][0] is None
    assert all(v is not None and v > 0 for v in curv["preconditioned"][1:])
    assert curv["rule"] == "adam" and curv["limit"][1] == pytest.approx(38.0 / 0.01)
    assert a.curvature is not None and set(a.curvature) == {"lipschitz_init", "lipschitz_final"}


@pytest.mark.parametrize(("model", "data"), [
    (lambda: mlp(in_features=8, hidden=[16, 16], out_features=3, norm="batchnorm"),
     lambda: blobs(n_samples=64, n_features=8, n_classes=3)),
    (lambda: cnn(in_channels=1, channels=[4, 8], num_classes=3),
     lambda: __import__("stabcheck.builtins.data", fromlist=["images"]).images(
         n_samples=32, image_size=8, n_classes=3)),
    (lambda: transformer(vocab_size=128, seq_len=8, d_model=16, n_layers=1, n_heads=2),
     lambda: __import__("stabcheck.builtins.data", fromlist=["text"]).text(
         seq_len=8, max_samples=32)),
])
def test_every_builtin_model(model: Any, data: Any) -> None:
    torch.manual_seed(0)
    net = model()
    x, y = data()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    tracker = CurvatureTracker(net, CE, TensorData((x, y)), opt, seed=0,
                               device=torch.device("cpu"))
    tracker.measure(0, 0.1)
    tracker.measure(1, 0.1)  # warm start: the second measurement converges in fewer products
    out = tracker.finish()
    assert out["error"] is None, out["error"]
    assert all(s is not None and s > 0 for s in out["sharpness"])
    assert out["lipschitz_init"] is not None and out["lipschitz_init"] > 0
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN buffers
    assert all(p.grad is None for p in net.parameters())


def test_init_curvature_and_diagnosis(write_config) -> None:
    loaded = load_config(write_config({"sweep": {"batch_sizes": [8, 32], "seeds": [0],
                                                 "learning_rates": [0.1]},
                                       "target_lr": 50.0}))
    problem = build_problem(loaded)
    report = init_curvature(problem, 0, problem.data, [8, 32])
    assert "error" not in report, report
    assert report["full_batch"] and report["probe_batch"] == 96
    assert report["rule"] == "heavy_ball"
    ceiling = report["by_batch_size"]["8"]["predicted_lr_ceiling"]
    assert ceiling == pytest.approx(3.8 / report["sharpness"], rel=1e-3)
    assert report["noise_scale"]["b_small"] == 8 and report["noise_scale"]["b_big"] == 32
    ctx = Context(thresholds=Thresholds(), config={"target_lr": 50.0},
                  init={0: {"curvature": report}})
    summary, findings = diag.analyse([], ctx)
    assert summary["curvature"].by_batch_size["32"].predicted_lr_ceiling == ceiling
    codes = [f.code for f in findings]
    assert codes.count("SC702") == 2  # 50 is above the ceiling at both batch sizes
    assert "SC703" not in codes  # a hint every audit gets: in the summary, not a finding
    if report["noise_scale"]["b_simple"] is not None:
        assert summary["curvature"].hints[0].code == "SC703"


def _record(**curvature: Any) -> ProbeRecord:
    return ProbeRecord(lr=0.1, seed=0, batch_size=8, index=4, key="k", outcome="completed",
                       steps_planned=30, steps_run=30, curvature=curvature)


def test_probe_detectors_on_hand_made_records() -> None:
    ctx = Context()
    rec = _record(steps=[0, 10, 20], sharpness=[10.0, 19.0, 22.0], preconditioned=[None] * 3,
                  limit=[20.0] * 3, eos_ratio=[0.5, 0.95, 1.1], rule="gd",
                  lipschitz_init=2.0, lipschitz_final=3.0)
    found = diag.detect(rec, ctx)
    assert [f.code for f in found] == ["SC701"]
    assert found[0].steps == [20] and found[0].value == pytest.approx(1.1)
    assert diag.detect(_record(eos_ratio=[0.99], steps=[0], lipschitz_init=1.0,
                               lipschitz_final=9.0), ctx) == []
    mlp = Context(init={0: {"layers": [{"name": "0", "kind": "Linear"},
                                       {"name": "2", "kind": "Conv2d"}]}})
    grown = diag.detect(_record(lipschitz_init=1.0, lipschitz_final=25.0), mlp)
    assert [f.code for f in grown] == ["SC704"] and grown[0].value == pytest.approx(25.0)
    # Through an embedding or a normalisation layer the product of norms bounds nothing.
    for kind in ("Embedding", "LayerNorm"):
        other = Context(init={0: {"layers": [{"name": "e", "kind": kind},
                                             {"name": "0", "kind": "Linear"}]}})
        assert diag.detect(_record(lipschitz_init=1.0, lipschitz_final=25.0), other) == []
    assert diag.detect(_record(lipschitz_init=1.0, lipschitz_final=25.0), ctx) == []
    looser = Context(thresholds=Thresholds(eos_ratio=1.2, lipschitz_growth=30.0))
    assert diag.detect(rec, looser) == []


def test_predict_only_cli(write_config, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config({"sweep": {"batch_sizes": [16, 48], "learning_rates": [0.1],
                                     "seeds": [0, 1]}})
    result = CliRunner().invoke(cli, ["audit", str(config), "--predict-only", "--format", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["predict_only"] is True and set(out["seeds"]) == {"0", "1"}
    ceilings = out["predicted_lr_ceiling"]
    assert set(ceilings) == {"16", "48"} and all(c > 0 for c in ceilings.values())
    assert ceilings["16"] == min(s["by_batch_size"]["16"]["predicted_lr_ceiling"]
                                 for s in out["seeds"].values())
    assert "Predicted LR ceiling" in result.stderr
    assert not (tmp_path / "stabcheck-results").exists()  # nothing trained, nothing journaled
    refused = CliRunner().invoke(cli, ["audit", str(config), "--predict-only", "--png", "p"])
    assert refused.exit_code == 2 and "--png does not apply" in refused.stderr


def test_predict_only_with_a_non_finite_model_is_one_line(write_config, write_module) -> None:
    write_module("nan.py", """
        import torch
        from torch import nn
        class NaNOut(nn.Linear):
            def forward(self, x):
                return super().forward(x) * float("nan")
        def build():
            return NaNOut(4, 3)
    """)
    config = write_config({"model": {"builtin": None, "factory": "./nan.py:build", "kwargs": {}},
                           "optimizer": {"name": "adam", "kwargs": {}}})
    result = CliRunner().invoke(cli, ["audit", str(config), "--predict-only"])
    # No prediction is possible, and no probe ran to fail: a clean exit 0, not a crash (3).
    assert result.exit_code == 0, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output


def test_benchmark_smoke(capsys) -> None:
    from benchmarks.bench_curvature import main

    main(["--quick", "--models", "mlp", "--steps", "4", "--every", "2", "--threads", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert "hvp/step" in lines[1]
    row = lines[2].split()
    assert row[0] == "mlp" and row[4].endswith("x") and float(row[4][:-1]) > 0
    assert int(row[-1]) == 3  # measurements at steps 0, 2 and 4
    # The eigensolver table (power vs Lanczos vs dense) comes after the cost table.
    solver = lines[lines.index(next(x for x in lines if "lanczos hvps" in x)) + 1].split()
    assert solver[0] == "mlp"
    power_hvps, lanczos_hvps, lanczos_err = int(solver[5]), int(solver[8]), float(solver[9])
    assert 0 < lanczos_hvps <= 20 and power_hvps > 0 and abs(lanczos_err) < 5e-4
