"""Numerics: non-finite values and divergence without NaN.

Pure functions of a probe's trace. The non-finite step itself is found by the engine (it
must stop there); this module turns it into a finding, and judges a finite loss that ended
far above where it began.
"""

from __future__ import annotations

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

register(CodeInfo(
    code="SC101", name="non-finite", title="Loss, gradient or weights became NaN/Inf",
    severity=Severity.ERROR, family="numerics",
    explanation=(
        "Floating-point overflow or an invalid operation (log or sqrt of a negative, 0/0, "
        "exp of a large logit) produced NaN or Inf. Once one weight is non-finite, every later "
        "step is too, so the run is lost at that step. The most common cause is a learning "
        "rate past the stability limit eta < 2/lambda_max: the iterates grow geometrically "
        "until they overflow. The second is an unguarded operation, which the module named "
        "in the finding points at (the first module whose inputs were finite and whose output "
        "was not, found by replaying the failing step with hooks)."),
    source="Goodfellow, Bengio & Courville, Deep Learning (2016), 4.1 'Overflow and "
           "Underflow'; docs/theory.md section 1.",
    recommendation="Lower the learning rate below the max stable LR of this batch size, add "
                   "warmup or gradient clipping; if a module is named, guard its operation "
                   "(clamp before log/sqrt, compute softmax in float32).",
    config_key="sweep.learning_rates",
))

register(CodeInfo(
    code="SC102", name="diverged-finite", title="Loss diverged without NaN",
    severity=Severity.ERROR, family="numerics",
    explanation=(
        "The loss stayed finite but ended far above where it started: the optimizer moved "
        "the weights to a worse region and stayed there (a saturated softmax, dead units, "
        "or an oscillation that grew until something saturated). This is divergence even "
        "though no NaN was raised, and is easy to miss without looking at the curve."),
    source="fastai's learning-rate finder stops once the loss exceeds 4x its best value "
           "(Smith 2017, 'Cyclical Learning Rates'; fastai LRFinder stop_div); the default "
           "factor is the same 4.",
    recommendation="Treat this LR as past the stability boundary: lower it, or add warmup.",
    thresholds=("divergence_factor",), config_key="sweep.learning_rates",
))


def start_loss(loss: np.ndarray, n: int = 3) -> float:
    """Where the loss started: the median of its first ``n`` finite steps."""
    finite = loss[np.isfinite(loss)][:n]
    return float(np.median(finite)) if finite.size else float("nan")


def end_loss(loss: np.ndarray, fraction: float = 0.05, minimum: int = 5) -> float:
    """Where the loss ended: the median of its last ``fraction`` of steps (robust to noise)."""
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return float("nan")
    count = max(minimum, round(fraction * finite.size))
    return float(np.median(finite[-count:]))


def diverged_without_nan(loss: np.ndarray, factor: float) -> tuple[bool, float]:
    """Whether the final loss exceeds ``factor`` times the starting loss, and that ratio."""
    start, end = start_loss(loss), end_loss(loss)
    if not (np.isfinite(start) and np.isfinite(end)) or start <= 0:
        return False, float("nan")
    ratio = end / start
    return bool(ratio > factor), float(ratio)


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC101 for a probe that went non-finite; SC102 for one whose loss ran away."""
    th = ctx.thresholds
    if record.outcome == "nonfinite" and record.first_nonfinite_step is not None:
        step = record.first_nonfinite_step
        what = record.nonfinite_what or "value"
        kind = record.nonfinite_kind or "NaN/Inf"
        where = (f"{kind} first appears in {record.nonfinite_module}"
                 if record.nonfinite_module else f"non-finite {what}")
        message = f"{where} at step {step} ({record.label})"
        if record.nonfinite_module and what != "loss":
            message += f"; first seen in the {what}"
        return [make("SC101", message, probes=[record.index], steps=[step], value=float(step))]
    if record.outcome != "completed":
        return []
    diverged, ratio = diverged_without_nan(record.series("loss"), th.divergence_factor)
    if diverged:
        return [make("SC102", f"loss ended {ratio:.1f}x above where it started ({record.label})",
                     probes=[record.index], steps=[record.steps_run - 1], value=ratio,
                     threshold=th.divergence_factor)]
    return []

