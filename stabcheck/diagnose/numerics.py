"""Numerics: non-finite values and divergence without NaN.

Pure functions of a probe's trace. The non-finite step itself is found by the engine (it
must stop there); this module turns it into a finding, and judges a finite loss that ran
away: one that ended above where it started, or far above the best it reached.

The loss of step ``t`` is measured on step ``t``'s batch *before* update ``t`` (every engine
records it so), so the first step's loss is the loss at init: the starting point is that one
value, never a median of steps that may already have exploded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.findings import REGISTRY, CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

SMOOTH_STEPS = 5  # running-median width of the "best loss" and the final loss

register(CodeInfo(
    code="SC101", name="non-finite", title="Loss, gradient or weights became NaN/Inf",
    severity=Severity.ERROR, family="numerics", status="diverged",
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
    severity=Severity.ERROR, family="numerics", status="diverged",
    explanation=(
        "The loss stayed finite but ran away: it ended above the loss at init (by more than "
        "the step-to-step noise of the curve), or far above "
        "the best (running-median) loss the probe had reached. The optimizer moved the "
        "weights to a worse region and stayed there (a saturated softmax, dead units, or an "
        "oscillation that grew until something saturated). This is divergence even though no "
        "NaN was raised, and is easy to miss without looking at the curve."),
    source="fastai's learning-rate finder stops once the loss exceeds 4x its best value "
           "(Smith 2017, 'Cyclical Learning Rates'; fastai LRFinder stop_div). stabcheck "
           "compares the median of the last steps with the best 5-step running median, and "
           "uses 3, the figure of its calibration corpus's labelling rule (calibration/): there "
           "3 and 4 both flag every runaway and 2 raises a false alarm on a healthy ViT "
           "(AdamW, lr 0.03) that ended 2-3x above its best; divergence_floor guards "
           "near-zero losses. "
           "'Ended above its initial loss' is also the labelling rule's, with the initial loss "
           "one batch's and so a margin of the curve's step noise.",
    recommendation="Treat this LR as past the stability boundary: lower it, or add warmup.",
    thresholds=("divergence_factor", "divergence_floor", "divergence_noise_sigma"),
    config_key="sweep.learning_rates",
    plots=("loss",),
))


def start_loss(loss: np.ndarray) -> float:
    """The loss at init: the first step's (NaN when that step was not finite)."""
    return float(loss[0]) if loss.size and np.isfinite(loss[0]) else float("nan")


def end_loss(loss: np.ndarray, fraction: float = 0.05, minimum: int = SMOOTH_STEPS) -> float:
    """Where the loss ended: the median of its last ``fraction`` of steps (robust to noise)."""
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return float("nan")
    count = max(minimum, round(fraction * finite.size))
    return float(np.median(finite[-count:]))


def best_loss(loss: np.ndarray, width: int = SMOOTH_STEPS) -> float:
    """The lowest running median (``width`` steps) of the finite losses: the best the probe
    reached, not its luckiest single batch."""
    finite = loss[np.isfinite(loss)]
    if finite.size == 0:
        return float("nan")
    if finite.size < width:
        return float(np.median(finite))
    windows = np.lib.stride_tricks.sliding_window_view(finite, width)
    return float(np.median(windows, axis=1).min())


def step_noise(loss: np.ndarray) -> float:
    """A robust standard deviation of one step's loss around its trend: 1.4826 x the MAD of
    the step-to-step changes, over sqrt(2) (a change is the difference of two steps)."""
    d = np.diff(loss[np.isfinite(loss)])
    if d.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def runaway(loss: np.ndarray, factor: float, floor: float, noise_sigma: float = 2.0
            ) -> tuple[str, float] | None:
    """How a finite loss ran away, if it did: ``("start", end/start)`` when it ended above
    the loss at init by more than ``noise_sigma`` x the step noise (one batch's loss is a
    noisy start), ``("best", end/best)`` when it ended more than ``factor`` times above the
    best it reached (and by more than ``floor`` times the starting loss, so that noise on a
    loss trained to nearly zero is no runaway)."""
    start, end, best = start_loss(loss), end_loss(loss), best_loss(loss)
    if not (np.isfinite(start) and np.isfinite(end)):
        return None
    if end - start > noise_sigma * step_noise(loss):
        return "start", end / start if start > 0 else float("inf")
    if np.isfinite(best) and best > 0 and end > factor * best \
            and end - best > floor * abs(start):
        return "best", end / best
    return None


def diverged_without_nan(loss: np.ndarray, factor: float, floor: float = 0.1,
                         noise_sigma: float = 2.0) -> tuple[bool, float]:
    """Whether the finite loss ran away (:func:`runaway`), and the ratio that shows it."""
    found = runaway(loss, factor, floor, noise_sigma)
    return (found is not None, found[1] if found else float("nan"))


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
    loss = record.series("loss")
    found = runaway(loss, th.divergence_factor, th.divergence_floor, th.divergence_noise_sigma)
    if found is None:
        return []
    how, ratio = found
    if how == "start":
        text = (f"loss ended at {end_loss(loss):.4g}, above its initial {start_loss(loss):.4g} "
                f"({record.label})")
        threshold = 1.0
    else:
        text = (f"loss ended {ratio:.1f}x above the best it reached ({best_loss(loss):.4g} → "
                f"{end_loss(loss):.4g}) ({record.label})")
        threshold = th.divergence_factor
    return [make("SC102", text, probes=[record.index], steps=[record.steps_run - 1],
                 value=ratio, threshold=threshold)]


register(CodeInfo(
    code="SC104", name="non-finite-at-init", title="NaN/Inf at the first step of every probe",
    severity=Severity.ERROR, family="numerics",
    explanation=(
        "Every probe was non-finite at step 0, before any update, whatever its learning rate: "
        "the learning rate cannot be the cause. The first forward or backward pass itself "
        "produces NaN/Inf: NaN or Inf in the input data, a loss function that takes log or "
        "sqrt of zero or of a negative, or an initialisation that overflows (huge weights, "
        "an unguarded softmax in half precision)."),
    source="stabcheck design: advice must fit the cause; a learning rate only acts from the "
           "first update on, after step 0's loss and gradients were computed.",
    recommendation="Check the data for NaN/Inf (stabcheck validate does), then the loss "
                   "function and the module named; lowering the learning rate will not help.",
    config_key="data", lr_fixable=False,
))

register(CodeInfo(
    code="SC105", name="constant-zero-loss", title="The loss is exactly zero",
    severity=Severity.ERROR, family="numerics",
    explanation=(
        "The loss was exactly zero at every step of every probe: nothing is being trained, "
        "whatever the learning rate. The loss function does not depend on the model's output "
        "(targets compared with themselves, a detached output, a masked-out batch) or the "
        "labels are all ignored (every target equal to the ignore index)."),
    source="stabcheck design: advice must fit the cause.",
    recommendation="Check the loss function and the targets (loss:, data.target_key); this "
                   "is not a learning-rate problem.",
    config_key="loss", lr_fixable=False,
))

def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """SC104 / SC105: failures the learning rate cannot explain, named once for the grid;
    the per-probe SC101 findings then point at the cause instead of the learning rate."""
    finished = [p for p in probes if p.record.outcome in ("completed", "nonfinite")]
    if not finished:
        return {}, []
    findings: list[Finding] = []
    if all(p.record.outcome == "nonfinite" and p.record.first_nonfinite_step == 0
           for p in finished):
        modules = sorted({p.record.nonfinite_module for p in finished
                          if p.record.nonfinite_module})
        whats = sorted({p.record.nonfinite_what or "value" for p in finished})
        where = f"; first seen in {', '.join(modules[:3])}" if modules else ""
        lrs = sorted({p.record.lr for p in finished})
        findings.append(make(
            "SC104", f"every probe ({len(finished)}, lr {lrs[0]:g} to {lrs[-1]:g}) was "
                     f"non-finite at step 0 ({', '.join(whats)}){where}",
            probes=[p.record.index for p in finished], steps=[0]))
        for p in finished:
            for f in p.findings:
                if f.code == "SC101":
                    f.recommendation = REGISTRY["SC104"].recommendation
    elif all(p.record.outcome == "completed" and np.all(p.record.series("loss") == 0)
             for p in finished):
        findings.append(make("SC105", f"the loss was 0 at every step of all {len(finished)} "
                                      "probes", probes=[p.record.index for p in finished]))
    return {}, findings
