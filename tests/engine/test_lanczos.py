"""Sharpness by Lanczos against dense Hessians (the analytic ground truth of tiny models)."""

from __future__ import annotations

import time

import pytest
import torch

from stabcheck.builtins.data import blobs
from stabcheck.builtins.models import mlp
from stabcheck.engine.curvature import lanczos, measure_curvature, top_eigen
from stabcheck.engine.curvature.lanczos import MIN_STEPS
from tests.engine.test_curvature import CE, _flat_hessian, mlp_case

REL = 5e-4  # within 0.05% of the dense Hessian's top eigenvalue


def _operator(eigenvalues: list[float], seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A symmetric matrix with the given spectrum in a random orthonormal basis, and a start."""
    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    matrix = basis @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ basis.T
    return matrix, [torch.randn(n, generator=g, dtype=torch.float64)]


def _matvec(matrix: torch.Tensor, calls: list[int]) -> object:
    def apply(v: list[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(1)
        return [matrix @ v[0]]
    return apply


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lanczos_sharpness_matches_dense_hessian(activation: str, seed: int) -> None:
    net, x, y, spectrum = mlp_case(activation, seed)
    exact = float(spectrum.max())
    assert float(spectrum.min()) < -0.5 * exact  # indefinite: the sign problem is real here
    m = measure_curvature(net, CE, (x, y), torch.optim.SGD(net.parameters(), lr=0.1),
                          method="lanczos")
    assert m["sharpness"] == pytest.approx(exact, rel=REL)
    assert m["converged"] and 2 <= m["hvps"] <= 20


def test_lanczos_takes_fewer_products_than_power_iteration_for_more_accuracy() -> None:
    x, y = blobs(n_samples=64, n_features=4, n_classes=3)
    cost = {"lanczos": 0, "power": 0}
    worst = {"lanczos": 0.0, "power": 0.0}
    for activation in ("tanh", "relu", "gelu"):
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            net = mlp(in_features=4, hidden=[8, 8], out_features=3, activation=activation)
            exact = float(torch.linalg.eigvalsh(_flat_hessian(net, x, y).double()).max())
            for method in cost:
                m = measure_curvature(net, CE, (x, y), torch.optim.SGD(net.parameters(), lr=0.1),
                                      method=method)
                cost[method] += m["hvps"]
                worst[method] = max(worst[method], abs(m["sharpness"] - exact) / exact)
    assert cost["lanczos"] < cost["power"], cost
    assert worst["lanczos"] <= REL < worst["power"], worst


def test_dominant_negative_eigenvalue_needs_no_shifted_pass() -> None:
    # |lambda_min| = 5 dominates lambda_max = 1: power iteration converges to -5 first and
    # needs its shifted second pass; Lanczos finds +1 in one.
    spectrum = [-5.0, -4.0, -1.0, 0.2, 0.5, 0.9, 1.0] + [0.01 * i for i in range(25)]
    matrix, start = _operator(spectrum)
    calls: list[int] = []
    found = lanczos(_matvec(matrix, calls), start, max_iters=32, tol=1e-6)
    assert found.value == pytest.approx(1.0, rel=1e-5)
    assert found.converged and found.iterations == len(calls) <= 32
    assert found.radius == pytest.approx(5.0, rel=1e-3)
    power_calls: list[int] = []
    power = top_eigen(_matvec(matrix, power_calls), start, max_iters=32, tol=1e-6)
    assert len(power_calls) > len(calls)  # two passes, and still not as close
    assert abs(power.value - 1.0) > abs(found.value - 1.0)
    vector = found.vector[0]  # the Ritz vector is the eigenvector of +1
    assert float(vector.norm()) == pytest.approx(1.0)
    assert float((matrix @ vector - vector).norm()) < 1e-2


def test_all_negative_spectrum_gives_the_least_negative_eigenvalue() -> None:
    matrix, start = _operator([-3.0, -2.0, -1.5, -0.25])
    assert lanczos(_matvec(matrix, []), start, tol=1e-8).value == pytest.approx(-0.25, rel=1e-6)


def test_zero_operator_and_exhausted_space() -> None:
    zero = lanczos(lambda v: [torch.zeros_like(v[0])], [torch.ones(6)])
    assert zero.value == 0.0 and zero.converged and zero.iterations == 1
    # A rank-2 operator: the Krylov space is exhausted after two steps and theta is exact.
    matrix, start = _operator([3.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    rank2 = lanczos(_matvec(matrix, []), start)
    assert rank2.value == pytest.approx(3.0, rel=1e-9) and rank2.iterations <= 3


def test_warm_start_and_deadline() -> None:
    matrix, start = _operator([float(i) for i in range(1, 41)], seed=3)
    cold = lanczos(_matvec(matrix, []), start, max_iters=40, tol=1e-6)
    warm = lanczos(_matvec(matrix, []), cold.vector, max_iters=40, tol=1e-6)
    assert warm.value == pytest.approx(40.0, rel=1e-6) and warm.iterations < cold.iterations
    late = lanczos(_matvec(matrix, []), start, max_iters=40, tol=1e-12,
                   deadline=time.perf_counter() - 1.0)
    assert late.iterations == MIN_STEPS and not late.converged
    assert late.value <= 40.0 + 1e-9  # a Ritz value never overshoots lambda_max


def test_unknown_method_is_refused() -> None:
    net = mlp(in_features=4, hidden=[4], out_features=3)
    x, y = blobs(n_samples=16, n_features=4, n_classes=3)
    with pytest.raises(ValueError, match="unknown eigenvalue method"):
        measure_curvature(net, CE, (x, y), torch.optim.SGD(net.parameters(), lr=0.1),
                          method="qr")
