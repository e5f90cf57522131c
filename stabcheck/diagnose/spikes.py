"""Loss spikes: sudden jumps of the training loss, recovered from or not."""

from __future__ import annotations

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.numerics import diverged_without_nan
from stabcheck.diagnose.series import Spike, find_spikes
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

_SOURCE = ("OLMo-core's StabilityMonitorCallback: a value more than 6 standard deviations "
           "above the previous 128 steps is a spike (Team OLMo, 'OLMo 2 Furious', 2024, studies "
           "loss and gradient-norm spikes as the main symptom of instability). stabcheck "
           "measures the deviation from the local trend, with a robust (MAD) spread of the "
           "step-to-step changes, because a short probe's loss falls steeply.")

register(CodeInfo(
    code="SC201", name="loss-spike", title="Loss spikes",
    severity=Severity.WARNING, family="loss dynamics",
    explanation=(
        "The loss jumped far above its recent trend and then came back. Each spike is a step "
        "where the update overshot: a batch with unusually large gradients, a learning rate "
        "close to the edge of stability, or an early phase before Adam's second-moment "
        "estimate has settled. Recovered spikes cost progress; at scale they are the usual "
        "prelude to divergence, so a probe that spikes at a learning rate is a warning for "
        "longer runs at it."),
    source=_SOURCE,
    recommendation="Lower the learning rate, add warmup (spikes in the first steps), or clip "
                   "gradients at the recommended threshold.",
    thresholds=("spike_sigma", "spike_window", "spike_min_history", "spike_min_range_fraction",
                "spike_recovery_steps"),
    config_key="sweep.learning_rates",
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
    config_key="sweep.learning_rates",
))


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
    spikes = loss_spikes(record, ctx)
    if not spikes:
        return []
    diverged = record.outcome == "nonfinite" or diverged_without_nan(
        record.series("loss"), ctx.thresholds.divergence_factor)[0]
    findings: list[Finding] = []
    fatal = [s for s in spikes if s.recovered_at is None] if diverged else []
    if fatal:
        first = fatal[0]
        end = record.first_nonfinite_step if record.first_nonfinite_step is not None \
            else record.steps_run - 1
        findings.append(make(
            "SC202", f"loss spiked at step {first.step} ({first.zscore:.0f} sigma) and the "
                     f"probe diverged by step {end} ({record.label})",
            probes=[record.index], steps=[first.step], value=first.zscore,
            threshold=ctx.thresholds.spike_sigma))
    recovered = [s for s in spikes if s not in fatal]
    if recovered:
        steps = [s.step for s in recovered]
        rate = len(recovered) / max(record.steps_run, 1)
        worst = max(recovered, key=lambda s: s.zscore)
        shown = ", ".join(str(s) for s in steps[:8]) + (" …" if len(steps) > 8 else "")
        lingering = sum(1 for s in recovered if s.recovered_at is None)
        late = (f", {lingering} not back within {ctx.thresholds.spike_recovery_steps} steps"
                if lingering else "")
        findings.append(make(
            "SC201", f"{len(recovered)} loss spike(s) at step {shown} ({rate:.1%} of steps, "
                     f"worst {worst.zscore:.0f} sigma{late}) ({record.label})",
            probes=[record.index], steps=steps, value=worst.zscore,
            threshold=ctx.thresholds.spike_sigma))
    return findings
