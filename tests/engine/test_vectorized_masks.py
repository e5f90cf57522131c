"""Hugging Face batches with an ``attention_mask``: a mask of all ones (what a tokenizer gives
unpadded text) runs on the vectorized engine, member for member as the sequential engine runs
it with the mask; a mask that masks something still falls back, with the reason."""

from __future__ import annotations

import pytest

from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine
from stabcheck.tensordata import TensorData
from tests.engine.test_vectorized import _assert_same, _problem, _run
from tests.engine.test_vectorized_hf import FAMILIES, _auto

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

# Token ids with an attention mask; ``pad`` masks the last position of every other row.
MASKED_TOKENS = """
    import torch

    def tokens(n=64, seq_len=8, vocab=32, pad=False):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, vocab, (n, seq_len), generator=g)
        mask = torch.ones(n, seq_len, dtype=torch.long)
        if pad:
            mask[::2, -1] = 0
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}
"""


def _config(family: str, pad: bool) -> dict:
    return {"model": FAMILIES[family]["model"],
            "data": {"builtin": None, "factory": "./masked.py:tokens", "kwargs": {"pad": pad}},
            "loss": "model", "optimizer": {"name": "adam", "kwargs": {}},
            "probe": {"steps": 8, "flush_every": 4, "device": "cpu"},
            "sweep": {"learning_rates": [0.001, 0.01], "seeds": [0, 1], "batch_sizes": [8]}}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_an_all_ones_mask_runs_vectorized_as_the_sequential_engine_runs_it(
        write_config, write_module, family: str) -> None:
    write_module("masked.py", MASKED_TOKENS)
    problem, config = _problem(write_config, _config(family, pad=False))
    assert isinstance(problem.data.tensors, dict) and "attention_mask" in problem.data.tensors
    engine, note = _auto(problem, config)
    assert isinstance(engine, VectorizedEngine), note
    vec = _run(engine, problem, config)
    assert {r.engine for r in vec.values()} == {"vectorized"}
    _assert_same(_run(SequentialEngine(), problem, config), vec)


def test_a_mask_that_masks_something_falls_back_with_the_reason(write_config,
                                                                write_module) -> None:
    write_module("masked.py", MASKED_TOKENS)
    problem, config = _problem(write_config, _config("gpt2", pad=True))
    engine, note = _auto(problem, config)
    assert isinstance(engine, SequentialEngine)
    assert note is not None and "does not run under vmap" in note


def test_only_masks_of_all_ones_are_dropped() -> None:
    ids = torch.arange(12).view(3, 4)
    ones = torch.ones(3, 4, dtype=torch.long)
    data, dropped = TensorData({"input_ids": ids, "attention_mask": ones}).without_trivial_masks()
    assert dropped == ("attention_mask",) and set(data.tensors) == {"input_ids"}
    padded = ones.clone()
    padded[0, -1] = 0
    same = TensorData({"input_ids": ids, "attention_mask": padded})
    assert same.without_trivial_masks() == (same, ())
    pair = TensorData((ids, ids))
    assert pair.without_trivial_masks() == (pair, ())
