"""Curvature of the user's own model: sharpness, the edge of stability, noise scale, Lipschitz.

Gradient descent on a quadratic is stable only while ``eta < 2 / lambda_max(H)``; with
heavy-ball momentum ``beta`` the limit is ``(2 + 2 beta) / eta`` on ``lambda_max``, and Adam
behaves like preconditioned heavy-ball, whose limit is ``2 (1 + beta1) / ((1 - beta1) eta)``
on the top eigenvalue of ``P^-1/2 H P^-1/2`` with ``P = diag(sqrt(v_hat) + eps)`` (Cohen et al.
2021, "Gradient descent on neural networks typically occurs at the edge of stability";
Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"). This package measures
those quantities on any ``nn.Module``:

* **sharpness** — ``lambda_max`` by the Lanczos method on Hessian-vector products
  (:mod:`.lanczos`; power iteration, :func:`top_eigen`, stays available as
  ``method="power"``). The gradient is computed once with ``create_graph=True``; every
  product is then one ``autograd.grad(g . v, params, retain_graph=True)`` on that same graph.
  Iteration starts from the previous top eigenvector (warm start) and stops after
  ``max_iters`` products or once the top Ritz value is within ``tol`` (relative) of an
  eigenvalue. Lanczos targets the largest *algebraic* eigenvalue directly, so a Hessian whose
  most negative eigenvalue dominates needs no second, shifted pass.
* **preconditioned sharpness** (Adam, AdamW, RMSprop) from the optimizer's second-moment state.
* **gradient noise scale** ``B_simple = tr(Sigma) / |G|^2`` from gradients at two batch sizes
  (McCandlish et al. 2018, "An empirical model of large-batch training", appendix A).
* **Lipschitz upper bound** — the product of the spectral norms of every weight matrix
  (power iteration). Conv kernels are reshaped to ``[out, in * k * k]``: that is a heuristic
  stand-in for the conv operator norm, not the exact value. The product bounds a plain
  feed-forward chain with 1-Lipschitz activations; residual connections, attention and
  normalisation layers are not bounded by it, so read it as a trend indicator (how much the
  weights' scale grew during a probe), not as a certificate.

Measurements never perturb training: gradients are taken with ``torch.autograd.grad`` (no
``.grad`` is touched), RNG states and module buffers (BatchNorm statistics) are saved and
restored around them, and the model stays in its current train/eval mode.

Modules: :mod:`.linalg` (Hessian-vector products, power iteration), :mod:`.lanczos`,
:mod:`.measure` (one
measurement against the optimizer's stability limit), :mod:`.lipschitz`, :mod:`.noise`,
:mod:`.init` (before training) and :mod:`.tracker` (during a probe).
"""

from __future__ import annotations

from stabcheck.engine.curvature.init import ADAPTIVE_NOTE, init_curvature
from stabcheck.engine.curvature.lanczos import lanczos
from stabcheck.engine.curvature.linalg import (
    MAX_ITERS,
    NEGLIGIBLE,
    TOL,
    TRACK_TOL,
    Eigen,
    HessianVectorProduct,
    power_iteration,
    preserved,
    top_eigen,
)
from stabcheck.engine.curvature.lipschitz import (
    lipschitz_bound,
    lipschitz_from,
    safe_lipschitz,
    spectral_norm,
    spectral_norms,
)
from stabcheck.engine.curvature.measure import (
    METHODS,
    PROBE_BATCH,
    mean_grad_sq,
    measure_curvature,
    preconditioner,
    probe_batch_index,
    stability_rule,
    top_eigenvalue,
)
from stabcheck.engine.curvature.noise import NOISE_DRAWS, noise_pair, noise_scale
from stabcheck.engine.curvature.tracker import CurvatureTracker
from stabcheck.engine.loop import drop_after
from stabcheck.optimizers.spec import StabilityRule

__all__ = ["ADAPTIVE_NOTE", "MAX_ITERS", "METHODS", "NEGLIGIBLE", "NOISE_DRAWS", "PROBE_BATCH",
           "TOL", "TRACK_TOL", "CurvatureTracker", "Eigen", "HessianVectorProduct", "StabilityRule",
           "drop_after", "init_curvature", "lanczos", "lipschitz_bound", "lipschitz_from",
           "mean_grad_sq", "measure_curvature", "noise_pair", "noise_scale", "power_iteration",
           "preconditioner", "preserved", "probe_batch_index", "safe_lipschitz",
           "spectral_norm", "spectral_norms", "stability_rule", "top_eigen",
           "top_eigenvalue"]
