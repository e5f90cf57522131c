"""Gradients: explosion (sustained growth, spikes) and vanishing through depth.

All measured on the gradient norm *before* clipping, which is what the engines record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.layers import dense_layers, rms, training_rms
from stabcheck.diagnose.series import Spike, find_spikes, quarter_medians
from stabcheck.diagnose.spikes import loss_spikes
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

ADAPTIVE = ("adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "radam")

_DEPTH_SOURCE = ("Bengio, Simard & Frasconi, 'Learning long-term dependencies with gradient "
                 "descent is difficult' (1994); Hochreiter (1991); Glorot & Bengio, "
                 "'Understanding the difficulty of training deep feedforward neural networks' "
                 "(AISTATS 2010). docs/theory.md section 3.")

register(CodeInfo(
    code="SC301", name="gradient-growth", title="Gradient norm grows steadily",
    severity=Severity.WARNING, family="gradients",
    explanation=(
        "The gradient norm at the end of the probe is many times what it was at the start, "
        "and the loss has not (yet) blown up. In a healthy run the gradient norm falls or "
        "levels off as the loss falls; sustained growth means the weights are moving into "
        "sharper regions (progressive sharpening) or an output scale is running away, and is "
        "what precedes divergence in longer runs. Measured as the median norm over the last "
        "quarter of steps over that of the first quarter, before clipping."),
    source=("Pascanu, Mikolov & Bengio, 'On the difficulty of training recurrent neural "
            "networks' (ICML 2013), on exploding gradients and clipping; the 10x factor is "
            "stabcheck's."),
    recommendation="Lower the learning rate or clip gradients at the recommended threshold; "
                   "check that the loss and the last layer's output scale are normalised.",
    thresholds=("grad_growth_factor",), config_key="probe.grad_clip",
))

register(CodeInfo(
    code="SC302", name="gradient-spike", title="Gradient-norm spikes",
    severity=Severity.WARNING, family="gradients",
    explanation=(
        "The gradient norm jumped far above its recent trend (the same rolling robust "
        "z-score as loss spikes). The gradient norm of real models is heavy-tailed: healthy "
        "Adam/AdamW transformers and BatchNorm networks near zero loss jump 2-70x while the "
        "loss never responds, so a spike alone is information. It is a warning when the loss "
        "responded (a loss spike within a few steps of it) or the spikes keep coming after "
        "the first steps of an adaptive optimizer, whose second-moment estimate is still "
        "settling: then the step size was multiplied by the spike and clipping would have "
        "absorbed it."),
    source=("OLMo-core StabilityMonitorCallback (6 sigma over 128 steps); Team OLMo, "
            "'OLMo 2 Furious' (2024), on gradient-norm spikes; Pascanu et al. 2013. When a "
            "spike is a warning is stabcheck's, set on its calibration corpus "
            "(calibration/README.md)."),
    recommendation="Clip gradients at the recommended threshold (probe.grad_clip) and check "
                   "the data for outliers at the spiking steps.",
    thresholds=("spike_sigma", "spike_window", "spike_min_history", "spike_min_range_fraction",
                "grad_spike_response_steps", "grad_spike_fraction", "adaptive_early_steps"),
    config_key="probe.grad_clip", plots=("grad_norm",), suggests_warmup=True,
))

register(CodeInfo(
    code="SC303", name="vanishing-gradients", title="Gradients vanish through depth",
    severity=Severity.WARNING, family="gradients",
    explanation=(
        "The RMS gradient of the first weight layer is orders of magnitude below that of the "
        "last. Backpropagation multiplies the gradient by each layer's Jacobian; with "
        "saturating activations (sigmoid's derivative is at most 1/4) or a too-small init the "
        "product shrinks geometrically with depth, so the early layers barely learn. Checked "
        "at init and as the median over training. The layers named are those whose RMS "
        "gradient is below the threshold times the largest layer's."),
    source=_DEPTH_SOURCE,
    recommendation="Use ReLU-family activations with He (Kaiming) init, add residual "
                   "connections and normalisation layers, or reduce depth.",
    thresholds=("vanishing_ratio",), config_key="model.kwargs",
))

register(CodeInfo(
    code="SC304", name="zero-gradient-layer", title="Layers with exactly zero gradient",
    severity=Severity.WARNING, family="gradients",
    explanation=(
        "Some layers received a gradient of exactly zero at every step: they are not "
        "connected to the loss (an unused module, a detached tensor), or every unit in them "
        "is dead. Their weights never change."),
    source="Lu et al., 'Dying ReLU and initialization: theory and numerical examples' (2019); "
           "docs/theory.md section 3.",
    recommendation="Check that the layers named are used in forward() and not behind "
                   ".detach() or torch.no_grad(); freeze them explicitly if that is intended.",
    config_key="model",
))


def _layer_sizes(ctx: Context, seed: int) -> dict[str, int]:
    init = ctx.init.get(seed) or {}
    return {layer["name"]: int(layer["size"]) for layer in dense_layers(init.get("layers", []))}


def grad_spikes_and_growth(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC301 and SC302 for one probe."""
    th = ctx.thresholds
    grad = record.series("grad_norm")
    findings: list[Finding] = []
    if record.outcome == "completed":
        first, last = quarter_medians(grad)
        if np.isfinite(first) and first > 0 and last / first > th.grad_growth_factor:
            findings.append(make(
                "SC301", f"gradient norm grew {last / first:.0f}x, from a median of "
                         f"{first:.3g} in the first quarter to {last:.3g} in the last "
                         f"({record.label})",
                probes=[record.index], steps=[record.steps_run - 1], value=last / first,
                threshold=th.grad_growth_factor))
    if record.outcome in ("completed", "nonfinite"):
        spikes = find_spikes(grad, th.spike_sigma, th.spike_window, th.spike_min_history,
                             th.spike_min_range_fraction, th.spike_recovery_steps)
        if spikes:
            findings.append(grad_spike_finding(record, ctx, spikes, grad))
    return findings


def early_window(ctx: Context) -> int:
    """Steps in which an adaptive optimizer's gradient-norm spikes are expected: Adam's and
    RMSprop's second-moment estimate starts from a handful of gradients, so the first updates
    are large and the gradient norm jumps while the loss goes on falling."""
    name, _ = ctx.optimizer
    if name.rsplit(":", 1)[-1].lower() not in ADAPTIVE:
        return 0
    warmup = int((ctx.config.get("probe") or {}).get("warmup_steps") or 0)
    return max(ctx.thresholds.adaptive_early_steps, warmup)


def responding(record: ProbeRecord, ctx: Context, steps: list[int]) -> list[int]:
    """The spike steps the loss responded to: a loss spike within
    ``grad_spike_response_steps`` steps *after* it. The loss of step ``t`` is measured on the
    same batch as the gradient of step ``t``, before update ``t``: a spike in both at one step
    is a hard batch, and only the loss after the update shows how the update landed."""
    lag = ctx.thresholds.grad_spike_response_steps
    loss_steps = [s.step for s in loss_spikes(record, ctx)]
    return [s for s in steps if any(s < ls <= s + lag for ls in loss_steps)]


def grad_spike_finding(record: ProbeRecord, ctx: Context, spikes: list[Spike],
                       grad: np.ndarray) -> Finding:
    """SC302: a warning when the loss responded to a spike after the early adaptive steps,
    or the spikes repeat; information otherwise (a heavy-tailed gradient norm)."""
    th = ctx.thresholds
    worst = max(spikes, key=lambda s: s.zscore)
    value, threshold = worst.evidence(th.spike_sigma)
    steps = [s.step for s in spikes]
    shown = ", ".join(map(str, steps[:8])) + (" …" if len(steps) > 8 else "")
    peak = float(np.nanmax(grad[steps]))
    late = [s for s in steps if s >= early_window(ctx)]
    answered = responding(record, ctx, late)
    repeated = len(late) > th.grad_spike_fraction * max(record.steps_run, 1)
    warn = bool(answered) or repeated
    why = (f"; the loss spiked after step {', '.join(map(str, answered[:4]))}" if answered
           else f"; {len(late)} after the early steps" if warn
           else "; the loss did not respond")
    return make(
        "SC302", f"{len(spikes)} gradient-norm spike(s) at step {shown} (peak {peak:.3g}, "
                 f"worst {worst.describe()}, {len(spikes) / max(record.steps_run, 1):.1%}"
                 f" of steps{why}) ({record.label})",
        severity=None if warn else Severity.INFO,
        probes=[record.index], steps=steps, value=value, threshold=threshold)


def zero_gradient_layers(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """SC304 for one probe: layers whose gradient was exactly zero at every step."""
    if record.outcome not in ("completed", "nonfinite") or record.steps_run == 0:
        return []
    matrix = record.layer_matrix()
    zero = [name for j, name in enumerate(record.layer_names)
            if matrix.shape[0] and np.all(matrix[:, j] == 0)]
    if not zero:
        return []
    return [make("SC304", f"{len(zero)} layer(s) got exactly zero gradient at every step: "
                          f"{_names(zero)} ({record.label})",
                 probes=[record.index], value=float(len(zero)))]


def training_flow(record: ProbeRecord, ctx: Context) -> tuple[float, list[str]] | None:
    """(first/last RMS ratio, near-zero layers) when gradients vanish in this probe."""
    if record.outcome not in ("completed", "nonfinite") or record.steps_run == 0:
        return None
    per_layer = training_rms(record.layer_names, record.layer_matrix(),
                             _layer_sizes(ctx, record.seed))
    return vanishing(per_layer, ctx.thresholds.vanishing_ratio)


def vanishing(per_layer: dict[str, float], threshold: float
              ) -> tuple[float, list[str]] | None:
    """(first/last RMS ratio, near-zero layers) when gradients vanish through depth, else None.

    ``per_layer`` maps dense layers, in depth order, to their RMS gradient.
    """
    values = [(n, v) for n, v in per_layer.items() if np.isfinite(v)]
    if len(values) < 3:
        return None  # depth 1-2 cannot show vanishing through depth
    first, last = values[0][1], values[-1][1]
    if last <= 0:
        return None
    ratio = first / last
    if ratio >= threshold:
        return None
    top = max(v for _, v in values)
    near_zero = [n for n, v in values if v < threshold * top]
    return ratio, near_zero


def _names(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """Every per-probe gradient finding."""
    return grad_spikes_and_growth(record, ctx) + zero_gradient_layers(record, ctx)


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """SC303 at init and during training (once each, over the seeds and probes that show
    it: vanishing is a property of the model, not of one probe) and the flow summary."""
    th = ctx.thresholds
    hits: dict[int, tuple[float, list[str]]] = {}
    flow_at_init: dict[str, float] = {}
    for seed, report in sorted(ctx.init.items()):
        layers = dense_layers(report.get("layers", []))
        per_layer = {layer["name"]: rms(layer.get("grad_norm"), int(layer["size"]))
                     for layer in layers}
        values = [v for v in per_layer.values() if np.isfinite(v)]
        if len(values) >= 2 and values[-1] > 0:
            flow_at_init[str(seed)] = values[0] / values[-1]
        verdict = vanishing(per_layer, th.vanishing_ratio)
        if verdict is not None:
            hits[seed] = verdict
    findings: list[Finding] = []
    if hits:
        ratio = min(r for r, _ in hits.values())
        names = list(dict.fromkeys(n for _, ns in hits.values() for n in ns))
        findings.append(make(
            "SC303", f"at init the first layer's RMS gradient is {ratio:.1e} of the last's "
                     f"(seeds {', '.join(map(str, hits))}); near zero: {_names(names)}",
            steps=[0], value=ratio, threshold=th.vanishing_ratio))
    during = {p.record.index: v for p in probes
              if (v := training_flow(p.record, ctx)) is not None}
    if during:
        ratio = min(r for r, _ in during.values())
        names = list(dict.fromkeys(n for _, ns in during.values() for n in ns))
        findings.append(make(
            "SC303", f"during training the first layer's median RMS gradient is {ratio:.1e} "
                     f"of the last's in {len(during)} of {len(probes)} probes; near zero: "
                     f"{_names(names)}",
            probes=sorted(during), value=ratio, threshold=th.vanishing_ratio))
    return {"gradient_flow_at_init": flow_at_init}, findings
