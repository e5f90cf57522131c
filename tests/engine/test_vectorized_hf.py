"""Hugging Face models in the vectorized engine: every cohort member's trace equals the
sequential engine's (GPT-2, Llama, BERT, ViT, ConvNeXt, T5 and a BatchNorm ResNet), and a trial
that disagrees beyond the first member forces the sequential engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stabcheck.engine import EngineSettings
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine, select_engine
from stabcheck.plan import plan_probes
from tests.engine.test_vectorized import _assert_same, _problem, _run

pytest.importorskip("transformers")

TOKENS = {"builtin": "hf", "kwargs": {"task": "causal_lm", "n_samples": 64, "seq_len": 8,
                                      "vocab_size": 32}}
IMAGES = {"builtin": "hf", "kwargs": {"task": "image_classification", "n_samples": 64,
                                      "image_size": 8, "num_labels": 3}}
CALIBRATION = Path(__file__).resolve().parents[2] / "calibration"
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _hf(config: str, task: str, **overrides: Any) -> dict[str, Any]:
    return {"builtin": "hf", "kwargs": {"config": config, "task": task,
                                        "config_overrides": overrides}}


FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {"model": _hf("gpt2", "causal_lm", n_layer=1, n_head=2, n_embd=16, n_positions=8,
                          vocab_size=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
             "data": TOKENS},
    # pad_token_id 0: an Embedding with a padding_idx, which vmap's batching rule mishandled
    # for every member but the first (80-180x step-0 gradient norms).
    "llama": {"model": _hf("llama", "causal_lm", hidden_size=16, intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                           max_position_embeddings=8, vocab_size=32, pad_token_id=0),
              "data": TOKENS},
    "bert": {"model": _hf("bert", "masked_lm", hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32, vocab_size=32,
                          max_position_embeddings=8, **NO_DROPOUT),
             "data": {"builtin": "hf", "kwargs": {**TOKENS["kwargs"], "task": "masked_lm"}}},
    "vit": {"model": _hf("vit", "image_classification", image_size=8, patch_size=4,
                         hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=3, **NO_DROPOUT),
            "data": IMAGES},
    "convnext": {"model": _hf("ConvNextConfig", "image_classification", num_stages=2,
                              hidden_sizes=[8, 16], depths=[1, 1], patch_size=2, num_labels=3,
                              image_size=8), "data": IMAGES},
    "resnet": {"model": _hf("resnet", "image_classification", embedding_size=8,
                            hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            num_labels=3), "data": IMAGES},
    # T5's learnable position bias is an attention mask that needs a gradient, which the
    # fused CPU attention kernel vmap picks cannot give; folded attention (one call outside
    # vmap's per-member loop) lets torch choose the kernel that can.
    "t5": {"model": {"builtin": None, "factory": f"{CALIBRATION / 'models.py'}:t5",
                     "kwargs": {"width": 16}},
           "data": {"builtin": None, "factory": f"{CALIBRATION / 'data.py'}:copy_tokens",
                    "kwargs": {"n": 64}}},
}


def _auto(problem, config):
    """The engine ``--engine auto`` picks, and its note."""
    settings = EngineSettings.from_config(config.probe)
    return select_engine(problem, "auto", settings, problem.data, plan_probes(config))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_member_matches_the_sequential_engine(write_config, family: str) -> None:
    # Three members (the first two and the last in the trial), at safe learning rates.
    problem, config = _problem(write_config, {
        **FAMILIES[family], "loss": "model",
        "optimizer": {"name": "adamw", "kwargs": {"weight_decay": 0.01}},
        "probe": {"steps": 8, "flush_every": 4, "device": "cpu"},
        "sweep": {"learning_rates": [0.001, 0.003], "seeds": [0, 1], "batch_sizes": [8]}})
    engine, note = _auto(problem, config)
    assert isinstance(engine, VectorizedEngine), note
    assert not engine.math_attention  # folded attention needs no composite-kernel retry
    vec = _run(engine, problem, config)
    assert {r.engine for r in vec.values()} == {"vectorized"}
    _assert_same(_run(SequentialEngine(), problem, config), vec)


# An embedding table with a padding row, called through the functional API: vmap offsets each
# member's indices into the stacked table but not the padding index, so only the first member
# leaves its padding row untrained. The zero padding row under a norm makes that loud.
FUNCTIONAL_PADDING = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(8, 4))
            with torch.no_grad():
                self.table[0].zero_()
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            idx = (x.abs() * 3).long().clamp(max=7)[:, 0]
            e = nn.functional.embedding(idx, self.table, padding_idx=0)
            e = e * torch.rsqrt(e.square().mean(-1, keepdim=True) + 1e-6)
            return self.head(e)

    def build():
        return Net()
"""


def _select_for(write_config, write_module, stem: str, source: str, lrs: list[float]):
    """The engine ``auto`` picks for the model in ``source`` (seeds 0 and 1, batch 16)."""
    write_module(f"{stem}.py", source)
    problem, config = _problem(write_config, {
        "model": {"builtin": None, "factory": f"./{stem}.py:build", "kwargs": {}},
        "sweep": {"learning_rates": lrs, "seeds": [0, 1], "batch_sizes": [16]}})
    return (problem, config, *_auto(problem, config))


def test_a_mismatch_beyond_the_first_member_forces_the_sequential_engine(
        write_config, write_module) -> None:
    _, _, engine, note = _select_for(write_config, write_module, "padded",
                                     FUNCTIONAL_PADDING, [0.01, 0.1])
    assert isinstance(engine, SequentialEngine), "the trial let a wrong member through"
    assert note is not None and "\n" not in note
    assert "disagrees with the sequential engine, member 2 of 3" in note
    assert "gradient norm" in note


# A padding row shared with a tied output layer: the embedding slot passes it no gradient, the
# output layer still does (as in the sequential engine).
TIED_PADDING = """
    import torch
    from torch import nn

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(8, 4, padding_idx=0)
            self.out = nn.Linear(4, 8, bias=False)
            self.out.weight = self.embed.weight
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            idx = (x.abs() * 3).long().clamp(max=7)
            return self.head(self.out(torch.tanh(self.embed(idx).mean(1))))

    def build():
        return Tied()
"""


def test_a_padding_row_tied_to_an_output_layer_trains_as_in_the_sequential_engine(
        write_config, write_module) -> None:
    problem, config, engine, note = _select_for(write_config, write_module, "tied",
                                                TIED_PADDING, [0.05, 0.1])
    assert isinstance(engine, VectorizedEngine), note
    _assert_same(_run(SequentialEngine(), problem, config), _run(engine, problem, config))


def test_attention_dropout_runs_folded_and_trains_like_the_sequential_engine(
        write_config, monkeypatch) -> None:
    from stabcheck.engine.vectorized import attention

    folds: list[int] = []
    rule = attention._FoldedAttention.vmap

    def counted(info, in_dims, *args):
        folds.append(1)
        return rule(info, in_dims, *args)
    monkeypatch.setattr(attention._FoldedAttention, "vmap", staticmethod(counted))
    bert = FAMILIES["bert"]
    model = _hf("bert", "masked_lm", **{**bert["model"]["kwargs"]["config_overrides"],
                                        "attention_probs_dropout_prob": 0.3})
    problem, config = _problem(write_config, {
        "model": model, "data": bert["data"], "loss": "model",
        "optimizer": {"name": "adam", "kwargs": {}},
        "probe": {"steps": 30, "flush_every": 10, "device": "cpu"},
        "sweep": {"learning_rates": [0.01], "seeds": [0, 1, 2], "batch_sizes": [8]}})
    engine, note = _auto(problem, config)
    assert isinstance(engine, VectorizedEngine), note
    vec = _run(engine, problem, config)
    assert folds, "attention with dropout was not folded"
    seq = _run(SequentialEngine(), problem, config)
    for index, a in seq.items():  # different masks, the same training: comparable losses
        b = vec[index]
        assert a.outcome == b.outcome == "completed" and b.engine == "vectorized"
        la, lb = a.series("loss"), b.series("loss")
        assert la[-5:].mean() < la[0] and lb[-5:].mean() < lb[0]
        assert abs(la[-5:].mean() - lb[-5:].mean()) < 0.05 * la[0]
