"""Gradient clipping: how often it fires, whether it can fire, and where to set it."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.results import ClippingSummary
from stabcheck.diagnose.series import find_spikes
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

_PLAYBOOK = ("Google Research, 'Deep Learning Tuning Playbook' (Godbole, Dahl, Gilmer, "
             "Shallue & Nado, 2023), section 'Gradient clipping': pick the threshold from the "
             "90th percentile of unclipped gradient norms; clipping more than ~50% of updates "
             "amounts to an odd way of lowering the learning rate.")

register(CodeInfo(
    code="SC401", name="clipping-too-frequent", title="Gradient clipping fires on most steps",
    severity=Severity.WARNING, family="clipping",
    explanation=(
        "More than the threshold fraction of steps were clipped. Clipping is meant to catch "
        "rare outliers; when it fires on most steps, every update has the fixed length "
        "grad_clip * lr and the optimizer is effectively running normalised gradient descent "
        "at a smaller step size. That hides the real instability and makes the learning rate "
        "meaningless."),
    source=_PLAYBOOK,
    recommendation="Lower the learning rate instead, or raise probe.grad_clip to the "
                   "recommended threshold.",
    thresholds=("clip_fraction_warn",), config_key="probe.grad_clip",
))

register(CodeInfo(
    code="SC402", name="clipping-never-fires", title="grad_clip never fires while norms spike",
    severity=Severity.WARNING, family="clipping",
    explanation=(
        "A clip threshold is set, but it is so large that it never fired in any probe, even "
        "at steps where the gradient norm spiked. It gives no protection: the spikes go "
        "straight into the update."),
    source=_PLAYBOOK,
    recommendation="Set probe.grad_clip near the recommended threshold (90th percentile of "
                   "healthy gradient norms).",
    thresholds=("clip_percentile",), config_key="probe.grad_clip",
))


def clip_fraction(record: ProbeRecord) -> float:
    """Fraction of the probe's steps whose gradient was clipped (NaN without steps)."""
    clipped = record.series("clipped")
    clipped = clipped[np.isfinite(clipped)]
    return float(clipped.mean()) if clipped.size else float("nan")


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC401 for a probe clipped on more than the threshold fraction of its steps."""
    if ctx.grad_clip is None or record.outcome not in ("completed", "nonfinite"):
        return []
    fraction = clip_fraction(record)
    if np.isfinite(fraction) and fraction > ctx.thresholds.clip_fraction_warn:
        return [make("SC401", f"{fraction:.0%} of steps clipped at grad_clip={ctx.grad_clip:g} "
                              f"({record.label})",
                     probes=[record.index], value=fraction,
                     threshold=ctx.thresholds.clip_fraction_warn)]
    return []


def recommended_clip(probes: list[ProbeDiagnosis], percentile: float) -> tuple[
        float | None, dict[str, float]]:
    """The percentile of pre-clip gradient norms over healthy probes: overall and per bs."""
    by_bs: dict[int, list[np.ndarray]] = defaultdict(list)
    for p in probes:
        if p.status == "healthy":
            grad = p.record.series("grad_norm")
            by_bs[p.record.batch_size].append(grad[np.isfinite(grad)])
    if not by_bs:
        return None, {}
    per_bs = {str(bs): float(np.percentile(np.concatenate(v), percentile))
              for bs, v in sorted(by_bs.items()) if sum(a.size for a in v)}
    everything = np.concatenate([a for v in by_bs.values() for a in v])
    overall = float(np.percentile(everything, percentile)) if everything.size else None
    return overall, per_bs


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """Clip fractions, the recommended threshold, and SC402 for a clip that never fires."""
    th = ctx.thresholds
    overall, per_bs = recommended_clip(probes, th.clip_percentile)
    fractions = {p.record.index: clip_fraction(p.record) for p in probes
                 if p.record.outcome in ("completed", "nonfinite")}
    summary: dict[str, Any] = {"clipping": ClippingSummary(
        grad_clip=ctx.grad_clip, percentile=th.clip_percentile, recommended_clip=overall,
        recommended_clip_by_batch_size=per_bs,
        max_clip_fraction=(max(fractions.values())
                           if ctx.grad_clip is not None and fractions else None))}
    findings: list[Finding] = []
    clip = ctx.grad_clip
    if clip is not None and fractions and all(f == 0 for f in fractions.values()):
        spiking: list[int] = []
        peak = 0.0
        for p in probes:
            grad = p.record.series("grad_norm")
            if find_spikes(grad, th.spike_sigma, th.spike_window, th.spike_min_history,
                           th.spike_min_range_fraction, th.spike_recovery_steps):
                spiking.append(p.record.index)
                peak = max(peak, float(np.nanmax(grad)))
        if spiking:
            advice = f" (recommended: {overall:.3g})" if overall is not None else ""
            findings.append(make(
                "SC402", f"grad_clip={clip:g} never fired, while the gradient norm spiked in "
                         f"{len(spiking)} probe(s) (peak {peak:.3g}){advice}",
                probes=spiking, value=peak, threshold=clip))
    return summary, findings
