"""What to set for the real run, from the whole diagnosis: learning rate, clip threshold,
warmup; and advice that fits the cause when the learning rate is not it.

Which codes name a cause the learning rate cannot fix (``CodeInfo.lr_fixable``) and which
suggest a warmup when they show in the first steps (``CodeInfo.suggests_warmup``) is read
from each code's registry entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.results import Recommendation, SweepSummary
from stabcheck.findings import Finding, Severity, codes_where

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis


def not_lr_causes(findings: list[Finding]) -> list[str]:
    """The codes among ``findings`` that name a cause the learning rate cannot fix."""
    fixed_otherwise = codes_where(lr_fixable=False)
    return sorted({f.code for f in findings if f.code in fixed_otherwise})


def attribute_causes(findings: list[Finding]) -> None:
    """When a finding names a cause the learning rate cannot fix (bad data, loss function),
    SC504 says so instead of advising lower learning rates."""
    causes = not_lr_causes(findings)
    if not causes:
        return
    for f in findings:
        if f.code == "SC504":
            f.message += f"; the cause is {', '.join(causes)}, not the learning rate"
            f.recommendation = (f"Fix what {', '.join(causes)} names first: a lower learning "
                                "rate will not help.")


def recommendations(summary: SweepSummary, findings: list[Finding],
                    probes: list[ProbeDiagnosis], ctx: Context) -> list[Recommendation]:
    """What to set for the real run. None while a finding names a cause the learning rate
    cannot fix (SC104, SC105)."""
    del probes
    out: list[Recommendation] = []
    if not_lr_causes(findings):
        return out
    margin = ctx.thresholds.stability_margin
    for bs, lr in summary.max_stable_lr.items():
        if lr:
            edge = (f"max stable LR {lr:g} (the largest LR healthy on every seed)"
                    if summary.boundary_found.get(bs) else
                    f"max stable LR >= {lr:g} (the largest swept; sweep higher to find the "
                    "boundary)")
            first_bad = summary.min_diverging_lr.get(bs)
            if first_bad is not None:
                edge += f", smallest diverging LR {first_bad:g}"
            out.append(Recommendation(
                what="learning_rate", batch_size=int(bs), value=lr / margin,
                text=f"bs={bs}: {edge}; train at lr <= {lr / margin:.3g} for a {margin:g}x "
                     "margin below the max stable LR"))
    clipping = summary.clipping
    if clipping is not None and clipping.recommended_clip is not None:
        value = clipping.recommended_clip
        out.append(Recommendation(
            what="grad_clip", value=value,
            text=f"grad_clip: {value:.3g} (the {clipping.percentile:g}th percentile of "
                 "pre-clip gradient norms in healthy probes)"))
    steps = int((ctx.config.get("probe") or {}).get("steps") or 0)
    early_limit = max(10, steps // 10)
    warmup_codes = codes_where(suggests_warmup=True)
    early = sorted({s for f in findings if f.code in warmup_codes
                    and f.severity.rank >= Severity.WARNING.rank
                    for s in f.steps if s < early_limit})
    warmup = int((ctx.config.get("probe") or {}).get("warmup_steps") or 0)
    if early:
        suggested = max(10, 2 * early[-1])
        out.append(Recommendation(
            what="warmup_steps", value=suggested,
            text=f"warmup: spikes in the first {early_limit} steps (step "
                 f"{', '.join(map(str, early[:6]))}) suggest a linear warmup of at least "
                 f"{suggested} steps (probe.warmup_steps is {warmup})"))
    return out
