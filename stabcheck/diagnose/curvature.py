"""Curvature: probes past their optimizer's edge of stability, and what init curvature predicts.

Pure functions of plain data: a probe's ``record.curvature`` (sharpness measured every
``probe.curvature_every`` steps, Lipschitz bound at the start and end) and the per-seed init
report's ``curvature`` entry (sharpness at init, predicted LR ceiling per batch size, gradient
noise scale), both written by :mod:`stabcheck.engine.curvature`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.results import CurvatureCell, CurvatureSummary, Hint
from stabcheck.diagnose.sweep import max_stable_lr
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

_COHEN_2021 = ("Cohen, Kaur, Li, Kolter & Talwalkar 2021, 'Gradient Descent on Neural Networks "
               "Typically Occurs at the Edge of Stability' (ICLR)")
_COHEN_2022 = ("Cohen et al. 2022, 'Adaptive Gradient Methods at the Edge of Stability' "
               "(arXiv:2207.14484)")

register(CodeInfo(
    code="SC701", name="edge-of-stability", title="Sharpness past the optimizer's stability limit",
    severity=Severity.WARNING, family="curvature",
    explanation=(
        "On a quadratic, gradient descent with step eta is stable only while the top Hessian "
        "eigenvalue (the sharpness) stays below 2/eta; heavy-ball momentum beta moves the limit "
        "to (2+2*beta)/eta, Nesterov to (2+2*beta)/((1+2*beta)*eta), and Adam, which acts as "
        "preconditioned heavy-ball, to 2(1+beta1)/((1-beta1)*eta) on the sharpness of the "
        "preconditioned Hessian P^-1/2 H P^-1/2 with P = diag(sqrt(v_hat)+eps) (about 38/eta at "
        "beta1 = 0.9). stabcheck measures the sharpness by the Lanczos method on Hessian-vector "
        "products on a fixed batch every probe.curvature_every steps and reports the ratio of "
        "sharpness to limit. Above 1, the step overshoots along the sharpest direction: the "
        "loss stops decreasing monotonically and, unless the dynamics pull the sharpness back "
        "down (the 'edge of stability' regime, where full-batch training often hovers just "
        "above the limit), the run diverges."),
    source=f"{_COHEN_2021}; {_COHEN_2022}; background: stability-principles.md, "
           "gradient-stability.md (eta < 2/lambda_max).",
    recommendation="Lower the learning rate (or the momentum) so that sharpness x lr stays under "
                   "the limit, or add warmup so the sharpness can adapt before the full LR.",
    thresholds=("eos_ratio",), config_key="sweep.learning_rates", plots=("sharpness",),
))

register(CodeInfo(
    code="SC702", name="target-above-ceiling",
    title="target_lr above the LR ceiling predicted from init sharpness",
    severity=Severity.WARNING, family="curvature",
    explanation=(
        "Before any training, stabcheck measures the sharpness at initialisation (on the first "
        "mini-batches of each batch size) and turns it into a learning-rate ceiling with the "
        "optimizer's own stability limit: 2/lambda for plain SGD, (2+2*beta)/lambda for "
        "heavy-ball momentum, 2(1+beta1)/((1-beta1)*lambda_P) for Adam with lambda_P the "
        "sharpness preconditioned by the first step's second-moment estimate. A target LR "
        "above it is unstable at the very first steps unless the sharpness falls quickly. "
        "The prediction is a first-order one: sharpness often grows during training "
        "(progressive sharpening), which makes the real boundary lower, while large steps can "
        "also catapult the weights to flatter regions and survive above it; for Adam the "
        "preconditioner changes fast in the first steps, so treat its ceiling as rough."),
    source=f"{_COHEN_2021}; {_COHEN_2022}; Lewkowycz et al. 2020, 'The large learning rate "
           "phase of deep learning: the catapult mechanism'.",
    recommendation="Use a target LR below the predicted ceiling, or add warmup and confirm the "
                   "LR with the sweep's observed max stable LR.",
    config_key="target_lr",
))

register(CodeInfo(
    code="SC703", name="critical-batch-size", title="Critical batch-size hint (gradient noise "
    "scale)", severity=Severity.INFO, family="curvature", status="hint",
    explanation=(
        "The simple gradient noise scale B_simple = tr(Sigma)/|G|^2 compares the per-example "
        "gradient variance with the squared full gradient. McCandlish et al. found that it "
        "predicts the critical batch size: well below it, doubling the batch nearly halves the "
        "steps needed (and the best LR grows about linearly with the batch); well above it, "
        "larger batches buy little. stabcheck estimates it at initialisation from gradients at "
        "two batch sizes (the sweep's smallest and largest), with the unbiased estimators of "
        "the paper's appendix A. The noise scale grows as the loss falls, so the value at init "
        "is a lower bound for later in training. Every audit gets this hint, so it is shown "
        "once in the summary (summary.curvature.hints), not as a finding."),
    source="McCandlish, Kaplan, Amodei et al. 2018, 'An Empirical Model of Large-Batch "
           "Training' (arXiv:1812.06162), section 2.2 and appendix A.",
    recommendation="Prefer batch sizes up to about B_simple for sample efficiency; beyond it, "
                   "scale the batch for throughput only.",
    config_key="sweep.batch_sizes",
))

register(CodeInfo(
    code="SC704", name="lipschitz-growth", title="Lipschitz bound grew sharply during a probe",
    severity=Severity.INFO, family="curvature",
    explanation=(
        "The product of the spectral norms of all weight matrices is an upper bound on how "
        "much a feed-forward network can amplify a change of its input (with 1-Lipschitz "
        "activations; conv kernels are treated as [out, in*k*k] matrices, a heuristic). It is "
        "reported only for models made of linear and convolutional layers alone: through "
        "embeddings, attention, normalisation or recurrent cells the product bounds nothing. "
        "It is "
        "loose, but its growth is informative: when it rises by a large factor within a short "
        "probe, the weights' scale is growing fast, the network becomes more sensitive to its "
        "inputs (less robust), and the logits and curvature tend to follow."),
    source="Szegedy et al. 2014, 'Intriguing properties of neural networks' (product of "
           "per-layer operator norms); Gouk et al. 2021, 'Regularisation of neural networks by "
           "enforcing Lipschitz continuity'; background: stability-principles.md (robustness). "
           "The 10x default is stabcheck's own: one order of magnitude within a short probe.",
    recommendation="Add weight decay or normalisation, or lower the LR; if robustness matters, "
                   "consider spectral normalisation.",
    thresholds=("lipschitz_growth",),
))

_SHARPNESS_NAME = {True: "preconditioned sharpness", False: "sharpness"}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC701 for a probe whose measured sharpness passed its stability limit; SC704."""
    curv = record.curvature or {}
    out: list[Finding] = []
    steps = list(curv.get("steps") or [])
    ratios = [_finite(r) for r in curv.get("eos_ratio") or []]
    threshold = ctx.thresholds.eos_ratio
    above = [(s, r, i) for i, (s, r) in enumerate(zip(steps, ratios, strict=False))
             if r is not None and r > threshold]
    if above:
        step, ratio, i = max(above, key=lambda a: a[1])
        adaptive = curv.get("rule") in ("adam", "rmsprop")
        values = curv.get("preconditioned" if adaptive else "sharpness") or []
        sharp = _finite(values[i]) if i < len(values) else None
        limits = curv.get("limit") or []
        limit = _finite(limits[i]) if i < len(limits) else None
        what = _SHARPNESS_NAME[adaptive]
        detail = f"{what} {sharp:.4g} vs limit {limit:.4g}" if sharp is not None \
            and limit is not None else what
        out.append(make(
            "SC701", f"{record.label}: {detail} at step {step} ({ratio:.2f}x the limit; "
            f"{len(above)} of {len(ratios)} measurements above it)",
            probes=[record.index], steps=[int(s) for s, _, _ in above], value=ratio,
            threshold=threshold))
    li, lf = _finite(curv.get("lipschitz_init")), _finite(curv.get("lipschitz_final"))
    growth = ctx.thresholds.lipschitz_growth
    if record.outcome == "completed" and li and lf and li > 0 and lf / li > growth \
            and lipschitz_is_bound(ctx, record.seed):
        out.append(make(
            "SC704", f"{record.label}: Lipschitz bound grew {lf / li:.3g}x "
            f"({li:.3g} → {lf:.3g}) over {record.steps_run} steps",
            probes=[record.index], value=lf / li, threshold=growth))
    return out


# Parameterised modules through which the product of weight spectral norms bounds the
# network's Lipschitz constant (with Lipschitz activations between them). Embeddings,
# attention (products of activations), normalisation (division by a data-dependent scale) and
# recurrent cells are not among them: through those the product is no bound at all.
BOUNDED_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "LazyLinear", "Bilinear")


def lipschitz_is_bound(ctx: Context, seed: int) -> bool:
    """Whether the model is a feed-forward stack of linear and convolutional layers, judged
    from the module kinds the init report of ``seed`` lists (unknown: not a bound)."""
    layers = (ctx.init.get(seed) or {}).get("layers") or []
    return bool(layers) and all(layer.get("kind") in BOUNDED_LAYERS for layer in layers)


def _largest(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return max(finite) if finite else None


def _median(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """``summary["curvature"]``: per batch size, the predicted LR ceiling beside the observed
    boundary; the noise scale; SC702 (target_lr above the ceiling) and SC703 (batch hint)."""
    seeds = {seed: report["curvature"] for seed, report in sorted(ctx.init.items())
             if isinstance(report.get("curvature"), dict)
             and "error" not in report["curvature"]}
    tracked = [p for p in probes if (p.record.curvature or {}).get("eos_ratio")]
    if not seeds and not tracked:
        return {}, []
    sizes = sorted({p.record.batch_size for p in probes}
                   | {int(bs) for s in seeds.values() for bs in s.get("by_batch_size", {})})
    stable = max_stable_lr(probes)
    by_bs: dict[str, CurvatureCell] = {}
    for bs in sizes:
        entries = [s["by_batch_size"].get(str(bs), {}) for s in seeds.values()]
        ceilings = [_finite(e.get("predicted_lr_ceiling")) for e in entries]
        finite_ceilings = [c for c in ceilings if c is not None]
        diverged = [p.record.lr for p in probes
                    if p.record.batch_size == bs and p.status == "diverged"]
        ratios = [_finite(r) for p in tracked if p.record.batch_size == bs
                  for r in p.record.curvature["eos_ratio"]]  # type: ignore[index]
        finite_ratios = [r for r in ratios if r is not None]
        by_bs[str(bs)] = CurvatureCell(
            predicted_lr_ceiling=min(finite_ceilings) if finite_ceilings else None,
            # The sharpest seed: the one that sets the (lowest) predicted ceiling.
            init_sharpness=_largest([_finite(e.get("sharpness")) for e in entries]),
            init_preconditioned_sharpness=_largest([_finite(e.get("preconditioned"))
                                                    for e in entries]),
            observed_max_stable_lr=stable.get(bs),
            observed_min_diverged_lr=min(diverged) if diverged else None,
            max_eos_ratio=max(finite_ratios) if finite_ratios else None)
    noise = [s.get("noise_scale") or {} for s in seeds.values()]
    b_simple = _median([_finite(n.get("b_simple")) for n in noise])
    first: dict[str, Any] = next(iter(seeds.values()), {})
    findings: list[Finding] = []
    target = ctx.target_lr
    if target is not None:
        for size, entry in by_bs.items():
            ceiling = entry.predicted_lr_ceiling
            if ceiling is not None and target > ceiling:
                findings.append(make(
                    "SC702", f"target_lr {target:g} is above the LR ceiling {ceiling:.4g} "
                    f"predicted from init sharpness at batch size {size} "
                    f"({target / ceiling:.2f}x)",
                    value=target, threshold=ceiling))
    hints: list[Hint] = []
    if b_simple is not None:
        pair = next((n for n in noise if n.get("b_small")), {})
        below = [bs for bs in sizes if bs < b_simple]
        above = [bs for bs in sizes if bs > b_simple]
        where = []
        if below:
            where.append(f"batch sizes {', '.join(map(str, below))} are below it "
                         "(noise-dominated: larger batches would still help)")
        if above:
            where.append(f"{', '.join(map(str, above))} above it (diminishing returns per "
                         "example)")
        # A hint that every audit gets: shown once in the summary, never as a finding.
        hints.append(Hint(
            code="SC703", text=f"gradient noise scale B_simple ≈ {b_simple:.4g} at init "
            f"(from batch sizes {pair.get('b_small')} and {pair.get('b_big')})"
            + (f": {'; '.join(where)}" if where else "")))
    summary = CurvatureSummary(
        rule=first.get("rule"), limit=first.get("limit"), full_batch=first.get("full_batch"),
        probe_batch=first.get("probe_batch"),
        init_sharpness=_median([_finite(s.get("sharpness")) for s in seeds.values()]),
        b_simple=b_simple, critical_batch_size_hint=b_simple,
        noise_scale={str(seed): s.get("noise_scale") for seed, s in seeds.items()},
        lipschitz_init=_median([_finite(s.get("lipschitz")) for s in seeds.values()]),
        by_batch_size=by_bs, hints=tuple(hints))
    return {"curvature": summary}, findings
