"""Initialisation: what one forward/backward at init says, before any training.

Reads the per-seed init reports (``ctx.init``, from :mod:`stabcheck.engine.initcheck`). Each
finding is reported once for the whole audit, naming the seeds and layers that show it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from stabcheck.diagnose.context import Context
from stabcheck.diagnose.layers import dense_layers
from stabcheck.diagnose.results import InitSummary
from stabcheck.findings import CodeInfo, Finding, Severity, make, register

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

register(CodeInfo(
    code="SC601", name="init-loss", title="Initial loss far above ln(num_classes)",
    severity=Severity.WARNING, family="initialisation",
    explanation=(
        "A freshly initialised classifier should be unsure: its softmax close to uniform, so "
        "the cross-entropy starts near ln(C) for C classes (1.386 for 4 classes, 2.303 for "
        "10). A much higher initial loss means the logits start large and confidently wrong: "
        "the output layer's init is too big or the inputs are not normalised. The first "
        "steps are then spent undoing the init, with large gradients, and that is where "
        "early spikes come from."),
    source="Karpathy, 'A Recipe for Training Neural Networks' (2019): 'verify loss @ init'.",
    recommendation="Scale down the last layer's init (e.g. zero or 0.01x), normalise the "
                   "inputs, and check the labels match the loss.",
    thresholds=("init_loss_tolerance",), config_key="model",
))

register(CodeInfo(
    code="SC602", name="signal-propagation", title="Activation scale drifts through depth",
    severity=Severity.WARNING, family="initialisation",
    explanation=(
        "The RMS of the layers' outputs changes by orders of magnitude from the first weight "
        "layer to the last hidden one. A good init keeps the forward signal at a constant "
        "scale through depth (variance preserving: fan-in scaling with the activation's "
        "gain); when each layer multiplies the scale by a factor different from one, the "
        "signal, and with it the backward gradient, shrinks or grows geometrically."),
    source="He, Zhang, Ren & Sun, 'Delving Deep into Rectifiers' (ICCV 2015); Glorot & "
           "Bengio (AISTATS 2010); Schoenholz et al., 'Deep Information Propagation' (ICLR "
           "2017). docs/theory.md section 3.",
    recommendation="Use an init matched to the activation (He for ReLU, Xavier for tanh), "
                   "or add normalisation layers.",
    thresholds=("activation_scale_ratio",), config_key="model.kwargs",
))

register(CodeInfo(
    code="SC603", name="dead-relu", title="Dead ReLUs at init",
    severity=Severity.WARNING, family="initialisation",
    explanation=(
        "Most units of a ReLU layer output zero for every example of the init batch. A dead "
        "unit gets no gradient and never recovers; with many of them the layer is a "
        "bottleneck. Causes: large negative biases, a badly scaled input, or a previous "
        "layer whose outputs are all of one sign."),
    source="Lu, Shin, Su & Karniadakis, 'Dying ReLU and Initialization: Theory and Numerical "
           "Examples' (2019); He et al. 2015.",
    recommendation="Use He init with zero biases, normalise inputs, or use LeakyReLU/GELU.",
    thresholds=("dead_relu_fraction",), config_key="model.kwargs",
))

register(CodeInfo(
    code="SC604", name="saturation", title="Saturated tanh/sigmoid units at init",
    severity=Severity.WARNING, family="initialisation",
    explanation=(
        "Most outputs of a tanh or sigmoid layer sit in the flat tails (|tanh| > 0.99, "
        "sigmoid < 0.01 or > 0.99), where the derivative is nearly zero: gradients through "
        "the layer vanish and it learns slowly, if at all."),
    source="Glorot & Bengio, 'Understanding the difficulty of training deep feedforward "
           "neural networks' (AISTATS 2010), on saturation of sigmoid and tanh layers.",
    recommendation="Use Xavier init (smaller weights), normalise inputs, or switch to a "
                   "non-saturating activation.",
    thresholds=("saturation_fraction",), config_key="model.kwargs",
))

register(CodeInfo(
    code="SC605", name="heavy-tailed-init", title="Heavy-tailed weight initialisation",
    severity=Severity.WARNING, family="initialisation",
    explanation=(
        "The entries of a weight matrix at init have a large excess kurtosis: a few very "
        "large weights among many small ones. Standard inits are Gaussian (excess kurtosis "
        "0) or uniform (-1.2). Heavy tails make a few units dominate the forward signal and "
        "the top of the Hessian spectrum, which lowers the stable learning rate."),
    source="Excess kurtosis (Pearson); a Laplace distribution has 3. Martin & Mahoney, "
           "'Implicit Self-Regularization in Deep Neural Networks' (JMLR 2021), on "
           "heavy-tailed weight spectra.",
    recommendation="Initialise with a Gaussian or uniform scheme (He/Xavier); check custom "
                   "init code and loaded checkpoints.",
    thresholds=("weight_kurtosis",), config_key="model",
))


def _seeds(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(set(seeds))))}"


def _worst(values: dict[str, list[tuple[float, int]]]) -> tuple[str, float, list[int]]:
    name = max(values, key=lambda n: max(v for v, _ in values[n]))
    return name, max(v for v, _ in values[name]), [s for _, s in values[name]]


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """SC601-SC605 from the init reports, and the init summary for the report."""
    th = ctx.thresholds
    findings: list[Finding] = []
    reports = {s: r for s, r in sorted(ctx.init.items()) if "error" not in r}
    if not reports:
        return {}, []

    losses = {s: r.get("initial_loss") for s, r in reports.items()}
    first = next(iter(reports.values()))
    classes, loss_name = first.get("num_classes"), first.get("loss")
    expected = math.log(classes) if loss_name == "cross_entropy" and classes and classes > 1 \
        else None
    if expected is not None:
        high = {s: v for s, v in losses.items()
                if v is not None and v > (1 + th.init_loss_tolerance) * expected}
        if high:
            worst = max(high.values())
            findings.append(make(
                "SC601", f"initial loss {worst:.3g} vs ln({classes}) = {expected:.3g} "
                         f"({worst / expected:.1f}x; {_seeds(list(high))})",
                steps=[0], value=worst, threshold=(1 + th.init_loss_tolerance) * expected))

    scale: dict[str, list[tuple[float, int]]] = defaultdict(list)
    dead: dict[str, list[tuple[float, int]]] = defaultdict(list)
    saturated: dict[str, list[tuple[float, int]]] = defaultdict(list)
    kurt: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for seed, report in reports.items():
        hidden = dense_layers(report.get("layers", []))[:-1]  # the head's logits scale freely
        rms: list[tuple[str, float]] = [(x["name"], float(x["output_rms"])) for x in hidden
                                        if x.get("output_rms") is not None
                                        and x["output_rms"] > 0]
        if len(rms) >= 2:
            ratio = rms[-1][1] / rms[0][1]
            change = max(ratio, 1 / ratio)
            if change > th.activation_scale_ratio:
                scale[f"{rms[0][0]} → {rms[-1][0]}"].append((ratio, seed))
        for act in report.get("activations", []):
            if (act.get("dead_fraction") or 0) > th.dead_relu_fraction:
                dead[act["name"]].append((act["dead_fraction"], seed))
            if (act.get("saturated_fraction") or 0) > th.saturation_fraction:
                saturated[act["name"]].append((act["saturated_fraction"], seed))
        for layer in report.get("layers", []):
            k = layer.get("weight_kurtosis")
            if k is not None and k > th.weight_kurtosis:
                kurt[layer["name"]].append((k, seed))

    if scale:
        where = next(iter(scale))
        ratio = scale[where][0][0]
        findings.append(make(
            "SC602", f"output RMS changes {ratio:.2g}x from {where} at init "
                     f"({_seeds([s for _, s in scale[where]])})",
            steps=[0], value=ratio, threshold=th.activation_scale_ratio))
    for code, found, what in (("SC603", dead, "dead ReLUs"),
                              ("SC604", saturated, "saturated units")):
        if found:
            name, worst, seeds = _worst(found)
            more = f" and {len(found) - 1} other layer(s)" if len(found) > 1 else ""
            threshold = th.dead_relu_fraction if code == "SC603" else th.saturation_fraction
            findings.append(make(
                code, f"{worst:.0%} {what} in {name}{more} at init ({_seeds(seeds)})",
                steps=[0], value=worst, threshold=threshold))
    if kurt:
        name, worst, seeds = _worst(kurt)
        more = f" and {len(kurt) - 1} other layer(s)" if len(kurt) > 1 else ""
        findings.append(make(
            "SC605", f"weights of {name}{more} have excess kurtosis {worst:.1f} at init "
                     f"({_seeds(seeds)})",
            steps=[0], value=worst, threshold=th.weight_kurtosis))
    summary = InitSummary(
        initial_loss={str(s): v for s, v in losses.items()},
        expected_initial_loss=expected or None,
        output_rms={str(s): {x["name"]: x.get("output_rms") for x in r.get("layers", [])
                             if x.get("output_rms") is not None}
                    for s, r in reports.items()})
    return {"init": summary}, findings
