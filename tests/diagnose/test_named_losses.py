"""A custom step's named losses: a ``loss`` entry is primary; else each loss is judged alone.

See docs/custom-step.md ("Which loss is judged"): without a primary loss, a named loss is not
expected to fall (a GAN's generator loss rises while its discriminator wins), but it must stay
finite, not blow up, run away from the best it reached, or spike.
"""

from __future__ import annotations

import numpy as np

from stabcheck.records import ProbeRecord, loss_views
from tests.diagnose.helpers import codes, decreasing, record, run


def with_losses(losses: dict[str, np.ndarray], primary: np.ndarray | None = None,
                **kwargs) -> ProbeRecord:
    """A record as the custom-step engine writes it: ``loss/<name>`` columns and ``loss`` =
    the primary entry, else the sum."""
    named = dict(losses) if primary is None else {"loss": primary, **losses}
    total = primary if primary is not None else np.sum(list(losses.values()), axis=0)
    rec = record(total, **kwargs)
    for name, values in named.items():
        rec.trace[f"loss/{name}"] = [float(v) for v in values]
    return rec


def gan_curves(n: int = 120) -> dict[str, np.ndarray]:
    """The discriminator wins slowly: d_loss falls a little, g_loss rises by a quarter."""
    rng = np.random.default_rng(0)
    t = np.arange(n) / n
    return {"d_loss": 1.4 - 0.1 * t + 0.005 * rng.standard_normal(n),
            "g_loss": 0.6 + 0.15 * t + 0.005 * rng.standard_normal(n)}


def test_adversarial_losses_that_rise_are_not_divergence() -> None:
    curves = gan_curves()
    # Read as one minimised loss, the rising g_loss is a runaway (SC102) ...
    assert "SC102" in codes(run([record(curves["g_loss"])]))
    # ... but a named loss of a step with no primary loss need not fall.
    diagnosis = run([with_losses(curves)])
    assert codes(diagnosis) == []
    assert diagnosis.probes[0].status == "healthy"


def test_each_named_loss_is_judged_and_named_in_the_finding() -> None:
    curves = gan_curves()
    n = curves["g_loss"].size
    # g_loss runs away: 5x above the best it reached by the end.
    curves["g_loss"] = np.concatenate([curves["g_loss"][: n // 2],
                                       np.linspace(0.7, 3.5, n - n // 2)])
    diagnosis = run([with_losses(curves)])
    diverged = [f for f in diagnosis.findings if f.code == "SC102"]
    assert len(diverged) == 1 and diverged[0].message.startswith("g_loss: loss ended")
    assert diagnosis.probes[0].status == "diverged"


def test_a_finding_that_does_not_depend_on_the_loss_is_reported_once() -> None:
    curves = gan_curves()
    clipped = np.ones(curves["g_loss"].size)  # every step clipped: SC401, whichever loss
    diagnosis = run([with_losses(curves, clipped=clipped)], config={"probe": {"grad_clip": 1}})
    clip = [f for f in diagnosis.findings if f.code == "SC401"]
    assert len(clip) == 1 and not clip[0].message.startswith(("d_loss", "g_loss"))


def test_a_loss_entry_is_primary_and_judged_as_a_plain_loss() -> None:
    n = 120
    rising = np.linspace(1.0, 1.3, n)  # a minimised loss that ends above its start
    rec = with_losses({"aux": decreasing(n)}, primary=rising)
    assert loss_views(rec) == {}  # the primary loss alone is judged
    assert "SC102" in codes(run([rec]))
    plain = with_losses({"aux": decreasing(n)}, primary=decreasing(n, seed=1))
    assert codes(run([plain])) == []


def test_loss_views_replace_only_the_loss_column() -> None:
    curves = gan_curves(40)
    rec = with_losses(curves)
    views = loss_views(rec)
    assert list(views) == ["d_loss", "g_loss"]
    assert views["g_loss"].trace["loss"] == rec.trace["loss/g_loss"]
    assert views["g_loss"].trace["grad_norm"] == rec.trace["grad_norm"]
    assert rec.trace["loss"] != rec.trace["loss/g_loss"]  # the record itself is unchanged
