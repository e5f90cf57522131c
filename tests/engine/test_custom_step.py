"""A user's own training step (step:): what it records, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stabcheck
from stabcheck.diagnose import normalisation
from stabcheck.diagnose.context import Context

SAMPLES = Path(__file__).resolve().parents[2] / "sample_configs"

PLAIN_STEP = """
import torch.nn.functional as F

def train_step(model, batch, optimizers, ctx):
    x, y = batch
    opt = optimizers["model"]
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()
"""

ACCUMULATE = """
import torch.nn.functional as F

def train_step(model, batch, optimizers, ctx):
    x, y = batch
    opt = optimizers["model"]
    opt.zero_grad()
    total = 0.0
    for xs, ys in zip(x.chunk(2), y.chunk(2)):
        loss = F.cross_entropy(model(xs), ys) / 2
        loss.backward()
        total = total + loss.detach()
    opt.step()
    return total
"""

Z_LOSS = """
import torch
import torch.nn.functional as F

def train_step(model, batch, optimizers, ctx):
    x, y = batch
    opt = optimizers["model"]
    opt.zero_grad()
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    z = torch.logsumexp(logits, dim=-1).square().mean()
    loss = ce + 1e-2 * z
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), "ce": ce.detach(), "z_loss": z.detach()}
"""


def _records(result: stabcheck.AuditResult) -> list:
    return [p.record for p in result.report.diagnosis.probes]


def _series(record, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in record.trace[name]], dtype=float)


def test_gradient_accumulation_records_the_full_batch_gradient(write_config, write_module,
                                                                tmp_path: Path) -> None:
    write_module("acc.py", ACCUMULATE)
    common = {"sweep": {"learning_rates": [0.05], "seeds": [0], "batch_sizes": [16]},
              "probe": {"steps": 8, "flush_every": 4, "device": "cpu", "grad_clip": 0.5}}
    plain = stabcheck.audit(write_config(common, name="plain.yaml"), out_dir=tmp_path / "p",
                            engine="sequential")
    custom = stabcheck.audit(write_config({**common, "step": "./acc.py:train_step"},
                                          name="acc.yaml"), out_dir=tmp_path / "c")
    (ref,), (rec,) = _records(plain), _records(custom)
    assert rec.outcome == "completed" and rec.steps_run == 8
    assert any("custom training step" in n for n in rec.notes)
    # Two half-batches of loss/2 accumulate exactly the full batch's mean gradient.
    np.testing.assert_allclose(_series(rec, "grad_norm"), _series(ref, "grad_norm"), rtol=1e-4)
    np.testing.assert_allclose(_series(rec, "grad_norm/model"), _series(rec, "grad_norm"),
                               rtol=1e-6)
    np.testing.assert_allclose(_series(rec, "loss"), _series(ref, "loss"), rtol=1e-4)
    np.testing.assert_allclose(_series(rec, "update_ratio"), _series(ref, "update_ratio"),
                               rtol=1e-3)
    assert _series(rec, "clipped").tolist() == _series(ref, "clipped").tolist()
    assert _series(rec, "clipped").max() == 1.0  # grad_clip 0.5 does clip here
    assert np.array(rec.layer_grad_norms).shape == np.array(ref.layer_grad_norms).shape


def test_z_loss_step_records_each_named_loss(write_config, write_module, tmp_path: Path) -> None:
    write_module("z.py", Z_LOSS)
    result = stabcheck.audit(write_config({"step": "./z.py:train_step"}), lr=[0.05], seeds=[0],
                             steps=6, out_dir=tmp_path / "r")
    (rec,) = _records(result)
    loss, ce, z = (_series(rec, k) for k in ("loss", "loss/ce", "loss/z_loss"))
    assert np.isfinite(loss).all() and (z > 0).all()
    np.testing.assert_allclose(loss, ce + 1e-2 * z, rtol=1e-5)


def test_gan_sample_flags_its_batchnorm_discriminator(tmp_path: Path) -> None:
    result = stabcheck.audit(SAMPLES / "custom_step_gan.yaml", lr=[1e-3], steps=6,
                             out_dir=tmp_path / "r")
    codes = {f.code for f in result.findings}
    assert "SC901" in codes
    (sc901,) = [f for f in result.findings if f.code == "SC901"]
    assert "discriminator.1" in sc901.message
    (rec,) = _records(result)
    g, d = _series(rec, "grad_norm/generator"), _series(rec, "grad_norm/discriminator")
    assert np.isfinite(g).all() and np.isfinite(d).all() and (g != d).all()
    np.testing.assert_allclose(_series(rec, "grad_norm"), np.sqrt(g**2 + d**2), rtol=1e-5)
    assert {"loss/d_loss", "loss/g_loss"} <= set(rec.trace)


def test_a_diverging_custom_step_names_the_nan_origin(write_config, write_module,
                                                      tmp_path: Path) -> None:
    write_module("plain.py", PLAIN_STEP)
    common = {"optimizer": {"name": "sgd", "kwargs": {}}}
    runs = [stabcheck.audit(write_config(updates, name=f"c{i}.yaml"), lr=[1e12], seeds=[0],
                            steps=12, out_dir=tmp_path / f"r{i}", engine="sequential")
            for i, updates in enumerate([common, {**common, "step": "./plain.py:train_step"}])]
    (ref,), (rec,) = (_records(r) for r in runs)
    assert rec.outcome == ref.outcome == "nonfinite"
    # The same step as the reference engine's, so the same step and the same module.
    assert (rec.first_nonfinite_step, rec.nonfinite_what) == \
        (ref.first_nonfinite_step, ref.nonfinite_what)
    assert rec.nonfinite_module == ref.nonfinite_module == "head"


@pytest.mark.parametrize(("source", "error", "match", "code"), [
    ("def train_step(model, batch, optimizers, ctx):\n    return 'done'\n",
     stabcheck.ConfigError, "the training step returned str; expected a scalar loss", 2),
    ("def train_step(model, batch, optimizers, ctx):\n    raise KeyError('disc')\n",
     stabcheck.UserCodeError, "raised KeyError", 3),
])
def test_a_broken_step_is_a_one_line_error(write_config, write_module, tmp_path: Path,
                                           source: str, error: type, match: str,
                                           code: int) -> None:
    write_module("bad.py", source)
    with pytest.raises(error, match=match) as info:
        stabcheck.audit(write_config({"step": "./bad.py:train_step"}), out_dir=tmp_path / "r")
    assert info.value.exit_code == code
    assert "\n" not in str(info.value)


def test_step_optimizers_naming_a_missing_submodule_is_a_config_error(
        write_config, write_module, tmp_path: Path) -> None:
    write_module("plain.py", PLAIN_STEP)
    path = write_config({"step": "./plain.py:train_step",
                         "step_optimizers": {"discriminator": "disc"}})
    with pytest.raises(stabcheck.ConfigError, match="no submodule 'disc'") as info:
        stabcheck.audit(path, out_dir=tmp_path / "r")
    assert info.value.exit_code == 2


def test_batchnorm_at_a_small_batch_is_flagged_and_plain_models_are_not() -> None:
    bn = {0: {"layers": [{"name": "net.0", "kind": "Linear"},
                         {"name": "net.1", "kind": "BatchNorm1d"}]}}
    _, found = normalisation.analyse([], Context(init=bn, config={"sweep": {
        "batch_sizes": [4, 64]}}))
    assert [f.code for f in found] == ["SC902"] and found[0].value == 4.0
    _, large = normalisation.analyse([], Context(init=bn, config={"sweep": {
        "batch_sizes": [64]}}))
    assert large == []
    plain = {0: {"layers": [{"name": "net.0", "kind": "Linear"}]}}
    assert normalisation.analyse([], Context(init=plain, config={"sweep": {
        "batch_sizes": [2]}})) == ({}, [])
    disc = {0: {"layers": [{"name": "d.1", "kind": "BatchNorm2d"}]}}
    _, gan = normalisation.analyse([], Context(init=disc, config={
        "sweep": {"batch_sizes": [64]}, "step_optimizers": {"discriminator": "d"}}))
    assert [f.code for f in gan] == ["SC901"]
