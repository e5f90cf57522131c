"""Detectors on real traces: probes recorded from the calibration corpus (calibration/).

Each probe in ``tests/fixtures/real_traces.json.gz`` is a stabcheck record of a small real
model (Hugging Face GPT-2, Llama, ResNet, MobileNetV2; torch LSTM, GRU) with the label the
plain-loop ground truth gave it. These are the curves the thresholds were set on: healthy
Adam transformers and BatchNorm nets with heavy-tailed gradient norms, finite runaways,
collapses to chance after a blow-up, a transient blow-up that recovers. The selection and
why each probe is there: calibration/fixtures.py (``python -m calibration.fixtures`` rewrites
the file from calibration/records/).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stabcheck.diagnose import Diagnosis, diagnose
from stabcheck.diagnose.context import Context
from stabcheck.findings import Severity
from stabcheck.records import ProbeRecord

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "real_traces.json.gz"
REAL: dict[str, Any] = json.loads(gzip.decompress(FIXTURE.read_bytes()))


def diagnosed(model: str) -> tuple[Diagnosis, dict[tuple[float, int], str]]:
    entry = REAL[model]
    fields = set(ProbeRecord.__dataclass_fields__)
    records = [ProbeRecord(**{k: v for k, v in p.items() if k in fields})
               for p in entry["probes"]]
    ctx = Context(config=entry["config"], init={int(s): r for s, r in entry["init"].items()})
    truth = {(p["lr"], p["seed"]): p["truth"] for p in entry["probes"]}
    return diagnose(records, ctx), truth


def probe(d: Diagnosis, lr: float, seed: int) -> Any:
    [p] = [p for p in d.probes if p.record.lr == lr and p.record.seed == seed]
    return p


def warnings(p: Any) -> set[str]:
    return {f.code for f in p.findings if f.severity.rank >= Severity.WARNING.rank}


def test_statuses_match_the_plain_loop_truth() -> None:
    for model in REAL:
        d, truth = diagnosed(model)
        for (lr, seed), label in truth.items():
            status = probe(d, lr, seed).status
            if label == "healthy":
                assert status == "healthy", (model, lr, seed)
            elif label == "diverged":
                assert status in ("diverged", "unstable"), (model, lr, seed)


def test_gpt2_blowup_then_chance_is_diverged() -> None:
    d, _ = diagnosed("gpt2-adam")
    p = probe(d, 0.3, 0)
    loss = p.record.series("loss")
    # Blown up by step 1, then back to about the untrained loss: a median of the first steps
    # (about 5) would call the end (2.86) a decrease; the loss at init (2.78) does not.
    assert loss[1] > 1.5 * loss[0] and loss.max() > 2 * loss[0]
    assert p.status == "diverged"
    # It ends about where it started (within its noise): a failed probe, since lr=0.03 learned.
    [f] = [f for f in p.findings if f.code == "SC103"]
    assert "lr=0.03" in f.message
    # The initial loss is the first step's, before any update: not a median of exploded steps.
    assert p.stats.initial_loss == pytest.approx(float(loss[0]), rel=1e-5)
    assert probe(d, 0.03, 0).status == "healthy"
    assert d.summary.max_stable_lr == {"16": 0.03}
    assert d.summary.min_diverging_lr == {"16": 0.3}


def test_lstm_runaway_from_its_best_loss_is_sc102() -> None:
    d, _ = diagnosed("lstm-sgd-nesterov")
    p = probe(d, 1.0, 0)
    [f] = [f for f in p.findings if f.code == "SC102"]
    assert "above the best it reached" in f.message and f.value > 3


def test_heavy_tailed_gradient_norms_of_healthy_runs_are_information() -> None:
    for model, lr, seed in (("llama-adamw-warmup", 0.3, 1), ("resnet-sgd-momentum", 0.1, 1)):
        d, _ = diagnosed(model)
        p = probe(d, lr, seed)
        spikes = [f for f in p.findings if f.code == "SC302"]
        assert spikes and all(f.severity == Severity.INFO for f in spikes), model
        assert p.status == "healthy", model
    # The BatchNorm ResNet's loss spikes are single hard batches, back within a step or two.
    d, _ = diagnosed("resnet-sgd-momentum")
    [f] = [f for f in probe(d, 0.1, 1).findings if f.code == "SC201"]
    assert f.severity == Severity.INFO and "mini-batch noise" in f.message


def test_healthy_adam_transformer_with_heavy_tailed_gradient_norms_stays_healthy() -> None:
    d, truth = diagnosed("t5-adam")
    p = probe(d, 0.03, 1)
    assert truth[(0.03, 1)] == "healthy"
    grad = p.record.series("grad_norm")
    assert np.nanmax(grad) > 10 * np.nanmedian(grad)  # heavy-tailed: 19x its median
    spikes = [f for f in p.findings if f.code == "SC302"]
    assert spikes and all(f.severity == Severity.INFO for f in spikes)
    assert p.status == "healthy" and not warnings(p)


def test_recovered_transient_blowup_is_a_finding() -> None:
    d, truth = diagnosed("gru-rmsprop")
    p = probe(d, 0.03, 0)
    loss = p.record.series("loss")
    # Up to 3x the loss at init by step 2, then trained to a tenth of it: it came back, but a
    # person reading the curve does not call it healthy (the plain loop labels it borderline).
    assert truth[(0.03, 0)] == "borderline"
    assert loss.max() > 2.5 * loss[0] and np.median(loss[-5:]) < 0.2 * loss[0]
    [f] = [f for f in p.findings if f.code == "SC205"]
    assert f.severity == Severity.WARNING and f.steps == [2]
    assert f.value == pytest.approx(3.0, abs=0.05) and f.threshold == 2.0
    assert p.status == "unstable"  # a finding, not a divergence: it recovered


def test_finite_runaway_where_a_lower_lr_trained_fails_the_gate() -> None:
    d, truth = diagnosed("gru-rmsprop")
    p = probe(d, 0.3, 0)
    assert truth[(0.3, 0)] == "diverged" and p.record.outcome == "completed"  # no NaN
    assert p.status == "diverged"
    assert any(f.severity == Severity.ERROR for f in p.findings)  # fails fail_on: error
    assert d.summary.min_diverging_lr == {"16": 0.3}


def test_mobilenet_no_progress_where_a_lower_lr_trained_is_a_failed_probe() -> None:
    d, _ = diagnosed("mobilenetv2-rmsprop")
    failed = probe(d, 0.01, 1)
    assert failed.status == "diverged" and "SC103" in warnings(failed)
    assert "SC205" in warnings(failed)  # it blew up above its initial loss first
    slower = probe(d, 0.001, 1)
    assert "SC103" not in warnings(slower)


def test_lipschitz_growth_is_not_reported_for_transformers_or_recurrent_nets() -> None:
    for model in REAL:
        d, _ = diagnosed(model)
        assert not [f for f in d.findings if f.code == "SC704"], model
