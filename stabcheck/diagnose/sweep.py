"""Sweep-level analysis: what the grid as a whole says about the training setup.

* the max stable LR per batch size and the stability margin of the user's target LR;
* LR sensitivity (Wortsman et al. 2023), seed sensitivity and fragile cells;
* batch-size sensitivity: how the max stable LR scales with the batch size;
* the per-cell summaries the reports' grids show.

Recommendations are :mod:`stabcheck.diagnose.advice`'s.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.numerics import end_loss, start_loss
from stabcheck.diagnose.results import CellSummary, FragileCell, LRSensitivity, StabilityMargin
from stabcheck.findings import CodeInfo, Finding, Severity, make, register

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

FINISHED = ("completed", "nonfinite")

register(CodeInfo(
    code="SC501", name="stability-margin", title="Target LR too close to the divergence boundary",
    severity=Severity.ERROR, family="sweep",
    explanation=(
        "The learning rate you intend to train with (target_lr) is within the margin factor "
        "of the largest learning rate at which every seed trained healthily, or above it. "
        "Short probes are an optimistic proxy: a full run sees more of the data, sharpening "
        "of the loss surface as training goes on (progressive sharpening drives lambda_max "
        "up to 2/eta), and rarer bad batches, so a setup that is barely stable for a few "
        "hundred steps routinely diverges later. The margin is max_stable_lr / target_lr."),
    source=("Wortsman et al., 'Small-scale proxies for large-scale Transformer training "
            "instabilities' (ICLR 2024): instabilities at scale are predicted by the LR at "
            "which small runs diverge; Cohen et al. (ICLR 2021) on progressive sharpening. "
            "The 2x default is stabcheck's."),
    recommendation="Lower target_lr to max_stable_lr / margin, or make the setup more stable "
                   "(warmup, clipping, normalisation) and audit again.",
    thresholds=("stability_margin",), config_key="target_lr",
))

register(CodeInfo(
    code="SC502", name="fragile-cell", title="Seeds disagree on divergence",
    severity=Severity.WARNING, family="sweep",
    explanation=(
        "At this (learning rate, batch size) some seeds diverged and others did not. The "
        "setup sits on the stability boundary, where the outcome depends on the "
        "initialisation and the data order: a real run at this learning rate is a coin flip."),
    source=("Wortsman et al. (ICLR 2024) on seed variance near the instability boundary; "
            "Google's Deep Learning Tuning Playbook on re-running trials with several seeds."),
    recommendation="Do not train at this learning rate; treat the next lower LR as the edge.",
    config_key="sweep.learning_rates",
))

register(CodeInfo(
    code="SC503", name="seed-sensitivity", title="Final loss depends strongly on the seed",
    severity=Severity.INFO, family="sweep",
    explanation=(
        "Seeds that all trained healthily still ended at quite different losses: the spread "
        "(max - min) of the final loss across seeds, over how far the loss fell, exceeds the "
        "threshold. "
        "Comparisons between configurations that differ by less than this spread are noise."),
    source=("Picard, 'torch.manual_seed(3407) is all you need' (2021); the Tuning "
            "Playbook's advice to measure trial-to-trial variance. The 0.5 default is "
            "stabcheck's."),
    recommendation="Use more seeds when comparing setups, or longer probes.",
    thresholds=("seed_spread",), config_key="sweep.seeds",
))

register(CodeInfo(
    code="SC504", name="no-stable-lr", title="No learning rate is stable at a batch size",
    severity=Severity.ERROR, family="sweep",
    explanation=(
        "Not one learning rate in the sweep trained healthily on every seed at this batch "
        "size, so there is no max stable LR to report and no evidence the setup trains at "
        "all. Either every learning rate is past the stability limit, or the model fails for "
        "another reason the per-probe findings name."),
    source="stabcheck design: an audit never calls a setup healthy without evidence.",
    recommendation="Extend sweep.learning_rates downwards, and fix the per-probe findings "
                   "first.",
    config_key="sweep.learning_rates",
))

NO_STABLE_LR_ADVICE = ("Extend sweep.learning_rates downwards until some LR is stable, then set "
                       "target_lr below it by the margin.")


def cells(probes: list[ProbeDiagnosis]) -> dict[tuple[int, float], list[ProbeDiagnosis]]:
    """Probes grouped by (batch size, lr): one cell of the grid, all its seeds."""
    grouped: dict[tuple[int, float], list[ProbeDiagnosis]] = defaultdict(list)
    for p in probes:
        grouped[(p.record.batch_size, p.record.lr)].append(p)
    return dict(grouped)


def max_stable_lr(probes: list[ProbeDiagnosis]) -> dict[int, float | None]:
    """Per batch size: the largest LR at which every seed stayed healthy (None if none did)."""
    out: dict[int, float | None] = {}
    for (bs, lr), members in sorted(cells(probes).items()):
        out.setdefault(bs, None)
        if all(m.status == "healthy" for m in members):
            current = out[bs]
            out[bs] = lr if current is None else max(current, lr)
    return out


def min_diverging_lr(probes: list[ProbeDiagnosis]) -> dict[int, float | None]:
    """Per batch size: the smallest LR at which some seed diverged (None if none did)."""
    out: dict[int, float | None] = {}
    for (bs, lr), members in sorted(cells(probes).items()):
        out.setdefault(bs, None)
        if out[bs] is None and any(m.status == "diverged" for m in members):
            out[bs] = lr
    return out


def _final(p: ProbeDiagnosis) -> float:
    return end_loss(p.record.series("loss")) if p.record.outcome == "completed" else math.nan


def cell_summaries(probes: list[ProbeDiagnosis]) -> tuple[CellSummary, ...]:
    """Every cell of the grid: its seeds, their statuses, the median of their final losses."""
    out = []
    for (bs, lr), members in sorted(cells(probes).items()):
        members = sorted(members, key=lambda m: m.record.seed)
        finals = [m.stats.final_loss for m in members if m.stats.final_loss is not None]
        out.append(CellSummary(batch_size=bs, lr=lr, seeds=tuple(m.record.seed for m in members),
                               statuses=tuple(m.status for m in members),
                               median_final_loss=float(np.median(finals)) if finals else None))
    return tuple(out)


def lr_sensitivity(probes: list[ProbeDiagnosis]) -> dict[int, LRSensitivity]:
    """Wortsman et al. (2023) LR sensitivity per batch size.

    ``E_eta[min(loss(eta), loss_0) - loss*]`` over the swept LRs, with ``loss(eta)`` the
    final loss averaged over seeds (a diverged probe counts as ``loss_0``, the loss at init),
    and ``loss* = min_eta loss(eta)``. ``normalised`` divides by ``loss_0 - loss*``: 0 when
    every LR reaches the best loss, 1 when only one does and the rest never leave init.
    """
    out: dict[int, LRSensitivity] = {}
    by_bs: dict[int, dict[float, list[ProbeDiagnosis]]] = defaultdict(lambda: defaultdict(list))
    for p in probes:
        if p.record.outcome in FINISHED:
            by_bs[p.record.batch_size][p.record.lr].append(p)
    for bs, by_lr in sorted(by_bs.items()):
        starts = [start_loss(p.record.series("loss")) for ps in by_lr.values() for p in ps]
        starts = [s for s in starts if np.isfinite(s)]
        if not starts or len(by_lr) < 2:
            continue
        loss0 = float(np.mean(starts))
        per_lr = []
        for _lr, ps in sorted(by_lr.items()):
            finals = [min(_final(p), loss0) if np.isfinite(_final(p)) else loss0 for p in ps]
            per_lr.append(float(np.mean(finals)))
        best = min(per_lr)
        value = float(np.mean([v - best for v in per_lr]))
        span = loss0 - best
        out[bs] = LRSensitivity(lr_sensitivity=value, best_loss=best, initial_loss=loss0,
                                normalised=value / span if span > 0 else None)
    return out


def boundary_found(probes: list[ProbeDiagnosis], stable: dict[int, float | None]
                   ) -> dict[int, bool]:
    """Per batch size: whether some swept LR above the max stable LR failed.

    When the max stable LR is the largest LR swept, the true boundary lies somewhere above
    it: the reported figure is a lower bound.
    """
    largest: dict[int, float] = {}
    for p in probes:
        largest[p.record.batch_size] = max(largest.get(p.record.batch_size, 0.0), p.record.lr)
    return {bs: lr is not None and lr < largest[bs] for bs, lr in stable.items()}


def batch_size_exponent(stable: dict[int, float | None], found: dict[int, bool]
                        ) -> float | None:
    """Slope of log(max stable LR) against log(batch size): 1 is the linear scaling rule,
    0.5 the square-root rule, 0 a batch-size-independent limit. None with fewer than two
    batch sizes whose boundary was found."""
    points = [(math.log(bs), math.log(lr)) for bs, lr in stable.items()
              if lr and found.get(bs)]
    if len({x for x, _ in points}) < 2:
        return None
    x, y = np.array(points).T
    slope = float(np.polyfit(x, y, 1)[0])
    return slope if abs(slope) > 1e-9 else 0.0


def seed_spread_of(members: list[ProbeDiagnosis], finals: list[float]) -> float | None:
    """(max - min) of the seeds' final losses over how far the loss fell (start - median end).

    Relative to the decrease, not to the loss itself: a loss trained to 1e-5 on one seed and
    2e-5 on another is not seed-sensitive, a loss that falls 0.1 on one seed and 1.0 on
    another is.
    """
    starts = [start_loss(m.record.series("loss")) for m in members]
    starts = [s for s in starts if np.isfinite(s)]
    if not starts:
        return None
    decrease = float(np.mean(starts)) - float(np.median(finals))
    if decrease <= 0:
        return None
    return (max(finals) - min(finals)) / decrease


def _margin(ctx: Context, stable: dict[int, float | None]) -> StabilityMargin | None:
    target = ctx.target_lr
    if target is None or not stable:
        return None
    sizes = sorted(stable)
    if ctx.target_batch_size is not None:
        bs = min(sizes, key=lambda b: (abs(math.log(b / ctx.target_batch_size)), b))  # type: ignore[operator]
        judged = [bs]
    else:
        judged = sizes
    margins = {b: (stable[b] or 0.0) / target for b in judged}
    worst = min(judged, key=lambda b: margins[b])
    return StabilityMargin(target_lr=target, batch_size=worst, max_stable_lr=stable[worst],
                           margin=margins[worst],
                           by_batch_size={str(b): m for b, m in margins.items()})


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """The sweep summary (for reports and JSON) and sweep-level findings."""
    th = ctx.thresholds
    counts = Counter(p.status for p in probes)
    stable = max_stable_lr(probes)
    findings: list[Finding] = []
    seed_spread: dict[str, float] = {}
    fragile: list[FragileCell] = []
    for (bs, lr), members in sorted(cells(probes).items()):
        finished = [m for m in members if m.record.outcome in FINISHED]
        diverged = [m for m in finished if m.status == "diverged"]
        if diverged and len(diverged) < len(finished):
            fragile.append(FragileCell(
                batch_size=bs, lr=lr, diverged_seeds=tuple(sorted(m.record.seed for m in diverged)),
                seeds=tuple(sorted(m.record.seed for m in finished))))
            findings.append(make(
                "SC502", f"at lr={lr:g} bs={bs}, {len(diverged)} of {len(finished)} seeds "
                         f"diverged (seeds {', '.join(str(m.record.seed) for m in diverged)})",
                probes=[m.record.index for m in finished],
                value=len(diverged) / len(finished)))
        healthy = [_final(m) for m in members if m.status == "healthy"]
        healthy = [v for v in healthy if np.isfinite(v)]
        if len(healthy) >= 2 and len(healthy) == len(members):
            spread = seed_spread_of(members, healthy)
            if spread is not None:
                seed_spread[f"{bs}/{lr:g}"] = spread
                if spread > th.seed_spread:
                    findings.append(make(
                        "SC503", f"final loss ranges {min(healthy):.3g}-{max(healthy):.3g} "
                                 f"across seeds at lr={lr:g} bs={bs} ({spread:.0%} of the "
                                 "decrease)",
                        probes=[m.record.index for m in members], value=spread,
                        threshold=th.seed_spread))
    for bs, best_lr in stable.items():
        if best_lr is None and any(p.record.batch_size == bs and p.record.outcome in FINISHED
                              for p in probes):
            tried = sorted({p.record.lr for p in probes if p.record.batch_size == bs})
            findings.append(make(
                "SC504", f"no learning rate in {', '.join(f'{x:g}' for x in tried)} trained "
                         f"healthily on every seed at bs={bs}",
                probes=[p.record.index for p in probes if p.record.batch_size == bs],
                value=float(bs)))
    margin = _margin(ctx, stable)
    if margin is not None and margin.margin is not None and margin.margin < th.stability_margin:
        bs, best = margin.batch_size, margin.max_stable_lr
        edge = (f"the max stable LR at bs={bs} is {best:g}" if best
                else f"no LR is stable at bs={bs}")
        findings.append(make(
            "SC501", f"target_lr={margin.target_lr:g} has a stability margin of "
                     f"{margin.margin:.2f}x ({edge}; required {th.stability_margin:g}x)",
            value=margin.margin, threshold=th.stability_margin,
            recommendation=(f"Lower target_lr to at most {best / th.stability_margin:.3g} "
                            f"(max stable LR / {th.stability_margin:g}), or make the setup "
                            "more stable and audit again." if best else
                            NO_STABLE_LR_ADVICE)))
    sensitivity = lr_sensitivity(probes)
    found = boundary_found(probes, stable)
    # The fields of the sweep's part of :class:`~stabcheck.diagnose.results.SweepSummary`.
    summary: dict[str, Any] = {
        "probes": len(probes),
        "by_status": {s: counts.get(s, 0) for s in
                      ("healthy", "unstable", "diverged", "error", "timeout", "oom")},
        # The largest LR that trained cleanly (healthy) on every seed ...
        "max_stable_lr": {str(bs): lr for bs, lr in stable.items()},
        # ... and the smallest LR at which a probe diverged: the two edges of the boundary.
        "min_diverging_lr": {str(bs): lr for bs, lr in min_diverging_lr(probes).items()},
        "stability_margin": margin,
        "lr_sensitivity": {str(bs): v for bs, v in sensitivity.items()},
        "seed_spread": seed_spread,
        "max_seed_spread": max(seed_spread.values()) if seed_spread else None,
        "fragile_cells": tuple(fragile),
        "boundary_found": {str(bs): v for bs, v in found.items()},
        "batch_size_exponent": batch_size_exponent(stable, found),
        "cells": cell_summaries(probes),
    }
    return summary, findings
