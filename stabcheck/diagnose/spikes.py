"""Loss spikes: sudden jumps of the training loss, recovered from or not."""

from __future__ import annotations

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.numerics import diverged_without_nan, end_loss, start_loss
from stabcheck.diagnose.series import Spike, find_spikes
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

_SOURCE = ("OLMo-core's StabilityMonitorCallback: a value more than 6 standard deviations "
           "above the previous 128 steps is a spike (Team OLMo, 'OLMo 2 Furious', 2024, studies "
           "loss and gradient-norm spikes as the main symptom of instability). stabcheck "
           "measures the deviation from the local trend, with a robust (MAD) spread of the "
           "step-to-step changes, because a short probe's loss falls steeply. Off a flat "
           "stretch (a loss at exactly 0 or stuck at a constant) the spread is ~0 and a "
           "z-score measures the flatness: the spread is floored at 1% of the range covered "
           "so far and such a spike is reported as its jump (calibration corpus, "
           "stabcheck.diagnose.series).")

register(CodeInfo(
    code="SC201", name="loss-spike", title="Loss spikes",
    severity=Severity.WARNING, family="loss dynamics",
    explanation=(
        "The loss jumped far above its recent trend and then came back. A spike gone within a "
        "few steps is mini-batch noise (a hard batch: real short probes with small batches, "
        "BatchNorm networks near zero loss) and is reported as information; one that takes "
        "longer to recover is a warning. Each spike is a step "
        "where the update overshot: a batch with unusually large gradients, a learning rate "
        "close to the edge of stability, or an early phase before Adam's second-moment "
        "estimate has settled. Recovered spikes cost progress; at scale they are the usual "
        "prelude to divergence, so a probe that spikes at a learning rate is a warning for "
        "longer runs at it."),
    source=_SOURCE,
    recommendation="Lower the learning rate, add warmup (spikes in the first steps), or clip "
                   "gradients at the recommended threshold.",
    thresholds=("spike_sigma", "spike_window", "spike_min_history", "spike_min_range_fraction",
                "spike_noise_steps", "spike_recovery_steps"),
    config_key="sweep.learning_rates", plots=("loss",), suggests_warmup=True,
))

register(CodeInfo(
    code="SC202", name="spike-before-divergence", title="A loss spike led to divergence",
    severity=Severity.ERROR, family="loss dynamics",
    explanation=(
        "The loss spiked and never came back: the probe diverged after it. Unlike a recovered "
        "spike, the overshoot moved the weights into a region the optimizer could not return "
        "from. The spike's step is where to look: the learning rate at that point (after "
        "warmup) is past what this setup tolerates."),
    source=_SOURCE,
    recommendation="Treat this learning rate as unstable: lower it, lengthen warmup, or clip "
                   "gradients.",
    thresholds=("spike_sigma", "spike_window", "spike_recovery_steps"),
    config_key="sweep.learning_rates", status="diverged", plots=("loss",),
    suggests_warmup=True,
))


register(CodeInfo(
    code="SC205", name="loss-blowup", title="Loss blew up above its initial value",
    severity=Severity.WARNING, family="loss dynamics",
    explanation=(
        "At some step the loss rose well above the loss at init, even if the probe came back "
        "down afterwards. A healthy probe never does worse than an untrained model: a rise "
        "to several times the initial loss means an update overshot so far that the model "
        "became confidently wrong, the signature of a learning rate at or past the edge of "
        "stability. Recovering from it costs the progress made before it, and in a longer "
        "run the same overshoot may not recover."),
    source="stabcheck calibration corpus (calibration/README.md): a person labelling "
           "plain-loop curves calls no probe healthy whose loss passed 2x its initial value; "
           "the loss at init is the first step's loss, measured before any update.",
    recommendation="Lower the learning rate, or add warmup if the blow-up is in the first "
                   "steps.",
    thresholds=("blowup_factor",), config_key="sweep.learning_rates", plots=("loss",),
    suggests_warmup=True,
))


def blowup(record: ProbeRecord, ctx: Context) -> Finding | None:
    """SC205 when the loss passed ``blowup_factor`` x its initial value at some step."""
    loss = record.series("loss")
    start = start_loss(loss)
    if not (np.isfinite(start) and start > 0) or not np.isfinite(loss).any():
        return None
    peak_step = int(np.nanargmax(np.where(np.isfinite(loss), loss, -np.inf)))
    peak = float(loss[peak_step])
    if peak <= ctx.thresholds.blowup_factor * start:
        return None
    return make("SC205", f"loss rose to {peak:.4g} at step {peak_step}, {peak / start:.1f}x its "
                         f"initial {start:.4g}, and ended at {end_loss(loss):.4g} "
                         f"({record.label})",
                probes=[record.index], steps=[peak_step], value=peak / start,
                threshold=ctx.thresholds.blowup_factor)


def loss_spikes(record: ProbeRecord, ctx: Context) -> list[Spike]:
    """The spike events of a probe's loss, with the configured thresholds."""
    th = ctx.thresholds
    return find_spikes(record.series("loss"), th.spike_sigma, th.spike_window,
                       th.spike_min_history, th.spike_min_range_fraction,
                       th.spike_recovery_steps)


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC201 for spikes the probe recovered from; SC202 for one that led to divergence."""
    if record.outcome not in ("completed", "nonfinite"):
        return []
    th = ctx.thresholds
    diverged = record.outcome == "nonfinite" or diverged_without_nan(
        record.series("loss"), th.divergence_factor, th.divergence_floor,
                            th.divergence_noise_sigma)[0]
    findings: list[Finding] = []
    if not diverged:
        found = blowup(record, ctx)
        if found is not None:
            findings.append(found)
    spikes = loss_spikes(record, ctx)
    if not spikes:
        return findings
    fatal = [s for s in spikes if s.recovered_at is None] if diverged else []
    if fatal:
        first = fatal[0]
        value, threshold = first.evidence(th.spike_sigma)
        end = record.first_nonfinite_step if record.first_nonfinite_step is not None \
            else record.steps_run - 1
        findings.append(make(
            "SC202", f"loss spiked at step {first.step} ({first.describe()}) and the "
                     f"probe diverged by step {end} ({record.label})",
            probes=[record.index], steps=[first.step], value=value, threshold=threshold))
    recovered = [s for s in spikes if s not in fatal]
    if recovered:
        steps = [s.step for s in recovered]
        rate = len(recovered) / max(record.steps_run, 1)
        worst = max(recovered, key=lambda s: s.zscore)
        value, threshold = worst.evidence(th.spike_sigma)
        shown = ", ".join(str(s) for s in steps[:8]) + (" …" if len(steps) > 8 else "")
        lingering = sum(1 for s in recovered if s.recovered_at is None)
        late = (f", {lingering} not back within {th.spike_recovery_steps} steps"
                if lingering else "")
        noise = all(s.recovered_at is not None and s.recovered_at - s.step
                    <= th.spike_noise_steps for s in recovered)
        if noise:
            late = f", each back within {th.spike_noise_steps} steps: mini-batch noise"
        findings.append(make(
            "SC201", f"{len(recovered)} loss spike(s) at step {shown} ({rate:.1%} of steps, "
                     f"worst {worst.describe()}{late}) ({record.label})",
            severity=Severity.INFO if noise else None,
            probes=[record.index], steps=steps, value=value, threshold=threshold))
    return findings
