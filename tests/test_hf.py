"""Hugging Face models (model: {builtin: hf}) built from a config, and their samples."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from stabcheck.builtins.hf import HFModel, hf, hf_data
from stabcheck.cli import cli
from stabcheck.config import load_mapping
from stabcheck.errors import ConfigError
from stabcheck.problem import build_problem

pytest.importorskip("transformers")

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"
SMALL = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 16,
         "intermediate_size": 32}
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("gpt2", "causal_lm", {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 16,
                           "vocab_size": 32}, {"vocab_size": 32, "seq_len": 8}),
    ("llama", "causal_lm", {**SMALL, "num_key_value_heads": 2, "vocab_size": 32},
     {"vocab_size": 32, "seq_len": 8}),
    ("bert", "masked_lm", {**SMALL, "vocab_size": 32, "max_position_embeddings": 16},
     {"vocab_size": 32, "seq_len": 8}),
    ("bert", "sequence_classification", {**SMALL, "vocab_size": 32, "num_labels": 3},
     {"vocab_size": 32, "seq_len": 8, "num_labels": 3}),
    ("vit", "image_classification", {**SMALL, "image_size": 8, "patch_size": 4,
                                     "num_labels": 3}, {"image_size": 8, "num_labels": 3}),
    ("resnet", "image_classification", {"embedding_size": 8, "hidden_sizes": [8],
                                        "depths": [1], "num_labels": 3},
     {"image_size": 8, "num_labels": 3}),
]


@pytest.mark.parametrize("config,task,overrides,data_kwargs", CASES,
                         ids=[f"{c}-{t}" for c, t, _, _ in CASES])
def test_each_family_builds_from_its_config_and_computes_its_loss(
        config: str, task: str, overrides: dict[str, Any], data_kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = hf(config, task, overrides)
    assert isinstance(model, HFModel)
    for key, value in overrides.items():
        assert getattr(model.model.config, key) == value
    batch = hf_data(task, n_samples=4, **data_kwargs)
    loss = model(**batch).loss
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad) or \
        task == "causal_lm"  # a causal LM may have unused position rows; the loss flows


def test_causal_lm_labels_default_to_the_inputs_and_positional_batches_map_to_names() -> None:
    torch.manual_seed(0)
    model = hf("gpt2", "causal_lm", CASES[0][2]).eval()
    ids = hf_data("causal_lm", n_samples=3, vocab_size=32, seq_len=8)["input_ids"]
    own = model(input_ids=ids).loss
    explicit = model.model(input_ids=ids, labels=ids).loss
    assert torch.equal(own, explicit)
    assert torch.equal(model(ids).loss, own)  # a tuple batch (input_ids,) works as well
    with pytest.raises(TypeError, match="at most 2 tensors"):
        model(ids, ids, ids)


def test_synthetic_tokens_have_learnable_structure() -> None:
    ids = hf_data("causal_lm", n_samples=256, vocab_size=32, seq_len=16)["input_ids"]
    pairs = torch.stack([ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)], 1)
    successors = {int(a): set() for a in pairs[:, 0]}
    for a, b in pairs.tolist():
        successors[a].add(b)
    assert max(len(s) for s in successors.values()) <= 3  # a sparse Markov chain, not noise
    masked = hf_data("masked_lm", n_samples=64, vocab_size=32, seq_len=16)
    targets = masked["labels"] != -100
    assert targets[:, 0].all() and (masked["input_ids"][targets] == 31).all()


def test_mistakes_are_config_errors_naming_what_to_change() -> None:
    base = {"loss": "model", "sweep": {"learning_rates": [0.001], "batch_sizes": [4]},
            "probe": {"device": "cpu"},
            "data": {"builtin": "hf", "kwargs": {"n_samples": 8, "vocab_size": 32,
                                                 "seq_len": 8}}}
    for kwargs, message in (
            ({"config": "gtp2"}, "unknown config 'gtp2'; expected one of gpt2, llama"),
            ({"config": "gpt2", "task": "translation"}, "unknown task 'translation'"),
            ({"config": "gpt2", "config_overrides": {"n_layers": 2}},
             "GPT2Config has no setting 'n_layers' \\(config_overrides\\) "
             "\\(did you mean 'n_layer'\\?\\)")):
        loaded = load_mapping({**base, "model": {"builtin": "hf", "kwargs": kwargs}})
        with pytest.raises(ConfigError, match=f"^<dict>: model.kwargs: .*{message}") as info:
            build_problem(loaded)
        assert info.value.exit_code == 2


def test_without_transformers_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    real = builtins.__import__

    def no_transformers(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ValueError, match=r"pip install 'stabcheck\[hf\]'"):
        hf("gpt2")


@pytest.mark.parametrize("sample,engine", [("hf_causal_lm", "vectorized"),
                                           ("hf_encoder", "vectorized"),
                                           ("hf_image_classifier", "vectorized")])
def test_samples_run(tmp_path: Path, sample: str, engine: str) -> None:
    result = CliRunner().invoke(cli, ["audit", str(SAMPLES / f"{sample}.yaml"), "--out",
                                      str(tmp_path / "r"), "--format", "json", "--steps", "6"],
                             catch_exceptions=False)
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.stderr
    assert len(report["probes"]) == 2
    for probe in report["probes"]:
        assert probe["status"] == "healthy" and probe["steps_run"] == 6
        # Dropout in GPT-2 and BERT no longer forces the sequential engine (eligibility is
        # judged in eval mode; per-member dropout masks under vmap).
        assert probe["engine"] == engine
        assert probe["stats"]["min_loss"] < probe["stats"]["initial_loss"]  # it trains
        assert probe["layers"]["names"][0].startswith("model.")


def test_a_batchnorm_resnet_runs_vectorized(tmp_path: Path) -> None:
    import stabcheck

    config = {"name": "resnet", "loss": "model", "optimizer": {"name": "adamw"},
              "model": {"builtin": "hf", "kwargs": {
                  "config": "resnet", "task": "image_classification",
                  "config_overrides": {"embedding_size": 8, "hidden_sizes": [8],
                                       "depths": [1], "num_labels": 3}}},
              "data": {"builtin": "hf", "kwargs": {"task": "image_classification",
                                                   "n_samples": 32, "image_size": 8,
                                                   "num_labels": 3}},
              "sweep": {"learning_rates": [1e-3], "seeds": [0], "batch_sizes": [8]},
              "probe": {"steps": 3, "device": "cpu"}}
    result = stabcheck.audit(config, out_dir=tmp_path / "r")
    assert result.exit_code == 0
    assert [p.status for p in result.probes] == ["healthy"]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["probes"][0]["engine"] == "vectorized"  # stacked running statistics
    assert not any(n.startswith("sequential engine used") for n in report["notes"])


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=["llama-causal_lm",
                                                           "bert-sequence_classification"])
def test_llama_and_a_bert_classifier_run_vectorized(case: tuple, tmp_path: Path) -> None:
    import stabcheck

    config, task, overrides, data_kwargs = case
    result = stabcheck.audit({
        "name": config, "loss": "model", "optimizer": {"name": "adamw"},
        "model": {"builtin": "hf", "kwargs": {"config": config, "task": task,
                                              "config_overrides": overrides}},
        "data": {"builtin": "hf", "kwargs": {"task": task, "n_samples": 32, **data_kwargs}},
        "sweep": {"learning_rates": [1e-3, 3e-3], "seeds": [0], "batch_sizes": [8]},
        "probe": {"steps": 3, "device": "cpu"}}, out_dir=tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert result.exit_code == 0
    assert not [n for n in report["notes"] if "engine" in n]  # no fallback
    assert [p["engine"] for p in report["probes"]] == ["vectorized", "vectorized"]
