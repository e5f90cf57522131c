"""Normalisation lint: BatchNorm where its batch statistics hurt.

Reads the module kinds the init reports list (``ctx.init[seed]["layers"]``, from
:mod:`stabcheck.engine.initcheck`) and the config: which submodule a custom step's
``step_optimizers`` call the discriminator, and the swept batch sizes. Each finding is
reported once for the whole audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stabcheck.diagnose.context import Context
from stabcheck.findings import CodeInfo, Finding, Severity, make, register

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

# Words that mark a GAN's discriminator (or critic) in an optimizer or module name.
DISCRIMINATOR_WORDS = ("discriminator", "critic", "disc", "netd")
# At or below this many examples per device, BatchNorm's batch mean and variance are too
# noisy to normalise with (Wu & He 2018: the error of BatchNorm grows quickly below 8-16).
BATCHNORM_MIN_BATCH = 8

register(CodeInfo(
    code="SC901", name="batchnorm-discriminator", title="BatchNorm in a GAN discriminator",
    severity=Severity.WARNING, family="normalisation",
    explanation=(
        "A discriminator with BatchNorm normalises each batch by its own mean and variance. "
        "When a batch is all real or all fake examples, as in the usual two-pass GAN step, "
        "those statistics themselves tell real from fake: the discriminator can separate "
        "the batches through them instead of judging each example, its gradients to the "
        "generator carry information about the other examples of the batch, and the game "
        "becomes sensitive to the batch composition. It is a common source of GAN "
        "oscillation and mode collapse."),
    source="Salimans et al., 'Improved Techniques for Training GANs' (NeurIPS 2016, on "
           "batch-dependent outputs and virtual batch norm); Gulrajani et al., 'Improved "
           "Training of Wasserstein GANs' (NeurIPS 2017: no BatchNorm in the critic); Miyato "
           "et al., 'Spectral Normalization for GANs' (ICLR 2018).",
    recommendation="Replace the discriminator's BatchNorm with LayerNorm or InstanceNorm, "
                   "or drop it and use spectral normalisation "
                   "(torch.nn.utils.parametrizations.spectral_norm).",
    config_key="model",
))

register(CodeInfo(
    code="SC902", name="batchnorm-small-batch", title="BatchNorm at a batch too small for "
    "its statistics",
    severity=Severity.WARNING, family="normalisation",
    explanation=(
        "BatchNorm divides by the batch's own standard deviation. With only a few examples "
        f"per device (here: {BATCHNORM_MIN_BATCH} or fewer) that estimate is noisy, so the "
        "normalised activations, and the gradients, fluctuate from batch to batch; the "
        "running statistics used at evaluation differ from those seen in training. The "
        "model trains worse and less stably at these batch sizes than at larger ones, "
        "independently of the learning rate."),
    source="Wu & He, 'Group Normalization' (ECCV 2018: BatchNorm's error rises sharply below "
           "8-16 examples per GPU); Ioffe, 'Batch Renormalization' (NeurIPS 2017).",
    recommendation="Use GroupNorm or LayerNorm, or a larger per-device batch (or synchronised "
                   "BatchNorm across devices).",
    config_key="sweep.batch_sizes",
))


def batchnorm_layers(ctx: Context) -> list[str]:
    """Names of the BatchNorm layers any init report lists."""
    names: dict[str, None] = {}
    for report in ctx.init.values():
        for layer in report.get("layers") or []:
            if str(layer.get("kind", "")).startswith(("BatchNorm", "SyncBatchNorm")):
                names[str(layer.get("name"))] = None
    return list(names)


def discriminator_prefixes(config: dict[str, Any]) -> list[str]:
    """Submodule paths a custom step's optimizers name as a discriminator."""
    groups = config.get("step_optimizers") or {}
    return [str(path) for name, path in groups.items()
            if any(w in f"{name} {path}".lower() for w in DISCRIMINATOR_WORDS)]


def _in_discriminator(layer: str, prefixes: list[str]) -> bool:
    if any(p == "" or layer == p or layer.startswith(p + ".") for p in prefixes):
        return True
    return any(w in part.lower() for part in layer.split(".") for w in DISCRIMINATOR_WORDS)


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """SC901 and SC902 from the module kinds of the init reports."""
    layers = batchnorm_layers(ctx)
    if not layers:
        return {}, []
    findings: list[Finding] = []
    prefixes = discriminator_prefixes(ctx.config)
    in_disc = [name for name in layers if _in_discriminator(name, prefixes)]
    if in_disc:
        findings.append(make("SC901", f"BatchNorm layer(s) in the discriminator: "
                             f"{', '.join(in_disc[:5])}"
                             + (f" and {len(in_disc) - 5} more" if len(in_disc) > 5 else "")))
    sizes = sorted({p.record.batch_size for p in probes}
                   | {int(bs) for bs in (ctx.config.get("sweep") or {}).get("batch_sizes", [])})
    small = [bs for bs in sizes if bs <= BATCHNORM_MIN_BATCH]
    if small:
        ids = [p.record.index for p in probes if p.record.batch_size in small]
        findings.append(make(
            "SC902", f"{len(layers)} BatchNorm layer(s) ({', '.join(layers[:3])}"
                     f"{', …' if len(layers) > 3 else ''}) at batch size "
                     f"{', '.join(map(str, small))}: at most {BATCHNORM_MIN_BATCH} examples "
                     "per device", probes=ids, value=float(min(small)),
            threshold=float(BATCHNORM_MIN_BATCH)))
    return {}, findings
