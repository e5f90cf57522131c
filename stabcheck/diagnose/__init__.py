"""From probe records to findings, probe statuses and the sweep summary.

Pure functions only: no torch, no I/O. Each family lives in its own module(s) and registers
its finding codes on import; :data:`FAMILIES` declares them all, once, and :func:`diagnose` runs
them:

* each family's probe detectors — ``(record, ctx) -> list[Finding]``, one probe at a time;
* each family's sweep analyses — ``(probes, ctx) -> (summary fields, findings)``, the whole
  grid; the fields are those of :class:`~stabcheck.diagnose.results.SweepSummary`.

What a code means for a probe's status, the plots, the advice and JUnit is read from its
registry entry (:class:`stabcheck.findings.CodeInfo`), never from lists of codes here or in a
renderer. The results handed to the reports are the frozen, rounded ones of
:mod:`stabcheck.diagnose.results`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stabcheck.diagnose import (
    advice,
    clipping,
    curvature,
    dynamics,
    execution,
    gradients,
    init,
    normalisation,
    numerics,
    spikes,
    sweep,
)
from stabcheck.diagnose.context import Context
from stabcheck.diagnose.layers import layer_summary
from stabcheck.diagnose.results import CellSummary, LayerSummary, ProbeStats, SweepSummary
from stabcheck.findings import Finding, Severity, sort_findings
from stabcheck.records import CRASHED, ProbeRecord, loss_views

STATUSES = ("healthy", "unstable", "diverged", "error", "timeout", "oom")


@dataclass
class ProbeDiagnosis:
    """One probe's record, its status, summary statistics and findings, and the summary of
    its grid cell (all its seeds)."""

    record: ProbeRecord
    status: str
    stats: ProbeStats
    findings: list[Finding] = field(default_factory=list)
    cell: CellSummary | None = None
    layers: LayerSummary = field(default_factory=LayerSummary)


@dataclass
class Diagnosis:
    """Everything the verdict and the reports need."""

    probes: list[ProbeDiagnosis]
    findings: list[Finding]
    summary: SweepSummary


def probe_stats(record: ProbeRecord) -> ProbeStats:
    """Summary statistics of one probe (None where undefined)."""
    loss = record.series("loss")
    grad = record.series("grad_norm")
    clipped = record.series("clipped")
    ratio = record.series("update_ratio")

    finite_grad = grad[np.isfinite(grad)]
    finite_ratio = ratio[np.isfinite(ratio)]
    return ProbeStats(
        initial_loss=numerics.start_loss(loss), final_loss=numerics.end_loss(loss),
        min_loss=float(np.nanmin(loss)) if np.isfinite(loss).any() else None,
        max_grad_norm=float(finite_grad.max()) if finite_grad.size else None,
        median_grad_norm=float(np.median(finite_grad)) if finite_grad.size else None,
        clip_fraction=float(np.nanmean(clipped)) if clipped.size else None,
        median_update_ratio=float(np.median(finite_ratio)) if finite_ratio.size else None)


def probe_status(record: ProbeRecord, findings: list[Finding]) -> str:
    """healthy / unstable / diverged / error / timeout / oom."""
    if record.outcome in CRASHED:
        return record.outcome
    if record.outcome == "nonfinite" or any(f.info.diverged for f in findings):
        return "diverged"
    if any(f.severity.rank >= Severity.WARNING.rank for f in findings):
        return "unstable"
    return "healthy"


ProbeDetector = Callable[[ProbeRecord, Context], list[Finding]]
SweepAnalysis = Callable[[list[ProbeDiagnosis], Context], tuple[dict[str, Any], list[Finding]]]


@dataclass(frozen=True)
class Family:
    """One detector family: the name its codes' registry entries give (``CodeInfo.family``),
    their prefix, its per-probe detectors and its sweep analyses."""

    name: str
    prefix: str
    detectors: tuple[ProbeDetector, ...] = ()
    analyses: tuple[SweepAnalysis, ...] = ()


# Every detector family, in the order detectors and analyses run. Sweep analyses run in this
# order too: numerics first (causes the learning rate cannot fix), the sweep before the
# families whose summaries use its statuses.
FAMILIES: tuple[Family, ...] = (
    Family("numerics", "SC1", (numerics.detect,), (numerics.analyse,)),
    Family("loss dynamics", "SC2", (spikes.detect, dynamics.detect)),
    Family("gradients", "SC3", (gradients.detect,), (gradients.analyse,)),
    Family("clipping", "SC4", (clipping.detect,), (clipping.analyse,)),
    Family("sweep", "SC5", (), (sweep.analyse,)),
    Family("initialisation", "SC6", (), (init.analyse,)),
    Family("curvature", "SC7", (curvature.detect,), (curvature.analyse,)),
    Family("execution", "SC8", (execution.detect,), (execution.analyse,)),
    Family("normalisation", "SC9", (), (normalisation.analyse,)),
)
PROBE_DETECTORS: list[ProbeDetector] = [d for f in FAMILIES for d in f.detectors]
SWEEP_ANALYSES: list[SweepAnalysis] = [a for f in FAMILIES for a in f.analyses]


# A named loss of a step with no primary ``loss`` (a GAN's d_loss and g_loss) is not one that
# anything minimises: it need not end below its start (SC102's first rule), fall (SC203) or
# settle (SC204). It must still stay finite, not blow up, run away or spike.
NOT_MINIMISED = {"divergence_noise_sigma": math.inf, "stagnation_min_decrease": -math.inf,
                 "oscillation_z": math.inf}


def probe_findings(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """Every per-probe detector's findings. A probe whose custom step returned named losses
    and no primary ``loss`` is judged once per named loss (:func:`~stabcheck.records.
    loss_views`, with :data:`NOT_MINIMISED`): a finding that reads the same whichever loss
    is judged (NaN, gradients, clipping) is kept once; one that differs names its loss."""
    views = loss_views(record)
    if not views:
        return [f for detect in PROBE_DETECTORS for f in detect(record, ctx)]
    each = replace(ctx, thresholds=ctx.thresholds.model_copy(update=NOT_MINIMISED))
    per_loss = {name: [f for detect in PROBE_DETECTORS for f in detect(view, each)]
                for name, view in views.items()}
    out: list[Finding] = []
    for name, found in per_loss.items():
        for f in found:
            if all(f in other for other in per_loss.values()):
                if f not in out:
                    out.append(f)
            else:
                out.append(replace(f, message=f"{name}: {f.message}"))
    return out


def diagnose(records: list[ProbeRecord], ctx: Context) -> Diagnosis:
    """Run every detector over every probe, then every sweep-level analysis."""
    ordered = sorted(records, key=lambda r: r.index)
    per_probe = {r.index: probe_findings(r, ctx) for r in ordered}
    minimised = [r for r in ordered if not loss_views(r)]  # "made no progress" needs a loss
    dynamics.failed_probes(minimised, per_probe, ctx)     # that is minimised
    dynamics.relax_low_lr_stagnation(minimised, per_probe, ctx)
    probes = [ProbeDiagnosis(r, probe_status(r, per_probe[r.index]), probe_stats(r),
                             per_probe[r.index],
                             layers=layer_summary(r.layer_names, r.layer_matrix()))
              for r in ordered]
    findings = [f for p in probes for f in p.findings]
    parts: dict[str, Any] = {}
    for analyse in SWEEP_ANALYSES:
        part, sweep_findings = analyse(probes, ctx)
        parts.update(part)
        findings += sweep_findings
    advice.attribute_causes(findings)
    summary = SweepSummary(**parts)
    summary = replace(summary, recommendations=tuple(
        advice.recommendations(summary, findings, probes, ctx)))
    by_cell = {(c.batch_size, c.lr): c for c in summary.cells}
    for p in probes:
        p.cell = by_cell.get((p.record.batch_size, p.record.lr))
    return Diagnosis(probes=probes, findings=sort_findings(findings), summary=summary)
