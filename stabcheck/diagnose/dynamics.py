"""Loss dynamics beyond spikes: stagnation and oscillation."""

from __future__ import annotations

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.numerics import diverged_without_nan, end_loss, start_loss
from stabcheck.diagnose.series import turning_point_z
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

register(CodeInfo(
    code="SC103", name="failed-probe", title="No progress where a lower LR trained",
    severity=Severity.ERROR, family="numerics", status="diverged",
    explanation=(
        "The probe ended at about the loss it started from (the untrained loss) although a "
        "lower learning rate at the same batch size did make progress. A larger step that "
        "learns less than a smaller one has not been 'slow': it overshot, typically blew up "
        "in the first steps and collapsed to predicting the label frequencies (chance "
        "level), or killed its units. For the max stable LR such a probe counts as "
        "diverged, whatever its final loss."),
    source="stabcheck calibration corpus (calibration/README.md): most real divergences are "
           "finite runaways and collapses to chance, not NaN; the issue that set up the corpus "
           "found 32 of 36 divergences without a NaN.",
    recommendation="Treat this learning rate as past the stability boundary: train below the "
                   "smallest LR that failed, or add warmup.",
    thresholds=("progress_fraction",), config_key="sweep.learning_rates",
))

register(CodeInfo(
    code="SC203", name="stagnation", title="Loss did not decrease",
    severity=Severity.WARNING, family="loss dynamics",
    explanation=(
        "Over the whole probe the loss fell by less than the threshold (relative to where it "
        "started). At the low end of a sweep this only means the learning rate is too small "
        "for the probe's length; at a high learning rate it is a symptom of instability that "
        "raised no NaN: dead ReLUs after an early overshoot, saturated activations, or an "
        "optimizer bouncing across a valley. A probe that stagnates is never counted as "
        "stable."),
    source="Karpathy, 'A Recipe for Training Neural Networks' (2019): check that the loss "
           "goes down on a small problem first. The 1% default is stabcheck's.",
    recommendation="If only the smallest learning rates stagnate, ignore or lengthen probe."
                   "steps; otherwise check for dead or saturated units (init findings) and "
                   "lower the learning rate.",
    thresholds=("stagnation_min_decrease",),
    config_key="sweep.learning_rates",
))

register(CodeInfo(
    code="SC204", name="oscillation", title="Loss oscillates step to step",
    severity=Severity.WARNING, family="loss dynamics",
    explanation=(
        "The loss goes up and down on alternate steps far more often than noise would make "
        "it. Gradient descent on a quadratic with step size eta multiplies the error along "
        "the top Hessian eigenvector by (1 - eta * lambda_max) each step; once that factor is "
        "below -1 + a little, the iterate flips sides of the valley every step. Persistent "
        "period-2 oscillation is the signature of a learning rate at the stability limit "
        "eta = 2 / lambda_max (the 'edge of stability')."),
    source="Turning-point test for randomness (Kendall & Stuart, The Advanced Theory of "
           "Statistics; Brockwell & Davis, Introduction to Time Series and Forecasting, "
           "1.6): i.i.d. values have 2(n-2)/3 turning points with variance (16n-29)/90. "
           "Cohen et al., 'Gradient Descent on Neural Networks Typically Occurs at the Edge "
           "of Stability' (ICLR 2021) for the oscillation near 2/lambda_max.",
    recommendation="The learning rate sits at the stability limit: lower it by 2x for "
                   "margin, or use warmup / a schedule that decays it.",
    thresholds=("oscillation_z",),
    config_key="sweep.learning_rates",
))


def relative_decrease(loss: np.ndarray) -> float:
    """(start - end) / |start| of a loss curve (NaN if undefined)."""
    start, end = start_loss(loss), end_loss(loss)
    if not (np.isfinite(start) and np.isfinite(end)) or start == 0:
        return float("nan")
    return (start - end) / abs(start)


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC203 when the loss did not fall; SC204 when it alternates like GD at 2/lambda_max."""
    if record.outcome != "completed" or record.steps_run < 16:
        return []
    loss = record.series("loss")
    th = ctx.thresholds
    if diverged_without_nan(loss, th.divergence_factor, th.divergence_floor,
                            th.divergence_noise_sigma)[0]:
        return []  # already SC102; stagnation or oscillation would only repeat it
    findings: list[Finding] = []
    decrease = relative_decrease(loss)
    if np.isfinite(decrease) and decrease < th.stagnation_min_decrease:
        findings.append(make(
            "SC203", f"loss moved from {start_loss(loss):.4g} to {end_loss(loss):.4g} "
                     f"({-decrease:+.1%}) over {record.steps_run} steps ({record.label})",
            probes=[record.index], value=decrease, threshold=th.stagnation_min_decrease))
    # Judge oscillation on the second half: the first steps are dominated by the descent.
    tail = loss[loss.size // 2:]
    z, turning, n = turning_point_z(tail)
    if np.isfinite(z) and z > th.oscillation_z:
        findings.append(make(
            "SC204", f"the loss changed direction at {turning} of {n - 2} steps in the second "
                     f"half (noise: about {2 * (n - 2) / 3:.0f}; z = {z:.1f}) ({record.label})",
            probes=[record.index], steps=[record.steps_run // 2], value=z,
            threshold=th.oscillation_z))
    return findings


def relax_low_lr_stagnation(records: list[ProbeRecord], findings: dict[int, list[Finding]],
                            ctx: Context) -> None:
    """Make SC203 informational where the LR is merely too small for the probe's length.

    A probe stagnates harmlessly when a larger LR at the same batch size and seed did train
    (its loss fell by at least the threshold, without a warning or error of its own); then the
    small LR is slow, not unstable. Stagnation above every LR that trains stays a warning.
    """
    threshold = ctx.thresholds.stagnation_min_decrease

    def trained(r: ProbeRecord) -> bool:
        decrease = relative_decrease(r.series("loss"))
        return (r.outcome == "completed" and np.isfinite(decrease) and decrease >= threshold
                and not any(f.severity.rank >= Severity.WARNING.rank
                            for f in findings[r.index]))

    for record in records:
        for i, f in enumerate(findings[record.index]):
            if f.code != "SC203" or f.severity != Severity.WARNING:
                continue
            if any(trained(other) for other in records
                   if other.batch_size == record.batch_size and other.seed == record.seed
                   and other.lr > record.lr):
                f.severity = Severity.INFO
                f.message += "; a larger LR trains, so this LR is only slow"
                findings[record.index][i] = f


def failed_probes(records: list[ProbeRecord], findings: dict[int, list[Finding]],
                  ctx: Context) -> None:
    """SC103 for a probe that made (almost) no progress while a lower LR of its batch size
    did: it failed, and counts as diverged. Runs before :func:`relax_low_lr_stagnation`."""
    th = ctx.thresholds

    def progress(r: ProbeRecord) -> float:
        return relative_decrease(r.series("loss")) if r.outcome == "completed" else np.nan

    for record in records:
        own = progress(record)
        if not np.isfinite(own) or own >= th.progress_fraction:
            continue
        if any(f.info.diverged for f in findings[record.index]):
            continue
        better = [(other, progress(other)) for other in records
                  if other.batch_size == record.batch_size and other.lr < record.lr]
        better = [(o, d) for o, d in better if np.isfinite(d) and d >= th.progress_fraction]
        if not better:
            continue
        other, done = max(better, key=lambda od: od[1])
        loss = record.series("loss")
        findings[record.index] = [f for f in findings[record.index] if f.code != "SC203"]
        findings[record.index].append(make(
            "SC103", f"loss went from {start_loss(loss):.4g} to {end_loss(loss):.4g} "
                     f"({f'{own:.0%} progress' if own >= 0 else f'{-own:.0%} worse'}) while "
                     f"lr={other.lr:g} seed={other.seed} made {done:.0%} progress "
                     f"({record.label})",
            probes=[record.index], steps=[record.steps_run - 1], value=own,
            threshold=th.progress_fraction))
