"""Building the problem: user code, data shapes, losses, and the checks before training."""

from __future__ import annotations

import pytest
import torch

from stabcheck.config import load_config
from stabcheck.errors import ConfigError, UserCodeError
from stabcheck.problem import build_problem

USER_MODELS = """
import torch
from torch import nn

class HFLike(nn.Module):
    '''Returns an object with .loss, like a Hugging Face model given labels.'''
    def __init__(self, vocab=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.out = nn.Linear(8, vocab)
    def forward(self, input_ids, labels):
        logits = self.out(self.emb(input_ids))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1))
        return type("Output", (), {"loss": loss, "logits": logits})()

def hf(vocab=16):
    return HFLike(vocab)

def linear(d_in=4, d_out=3):
    return nn.Linear(d_in, d_out)

def not_a_module():
    return 42

def explodes():
    raise RuntimeError("cannot build")
"""

USER_DATA = """
import torch
from torch.utils.data import Dataset

def tokens(n=64):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 16, (n, 8), generator=g)
    return {"input_ids": ids, "labels": ids.roll(-1, dims=1)}

class Pairs(Dataset):
    def __len__(self):
        return 40
    def __getitem__(self, i):
        return torch.full((4,), float(i)), i % 3

def dataset():
    return Pairs()

def tuple_data(n=40):
    return torch.randn(n, 4), torch.randint(0, 3, (n,))

def ragged():
    return torch.randn(10, 4), torch.zeros(9, dtype=torch.long)

def wrong_type():
    return [1, 2, 3]
"""


@pytest.fixture
def user_code(write_module):  # type: ignore[no-untyped-def]
    write_module("models.py", USER_MODELS)
    write_module("data.py", USER_DATA)


def test_builtin_problem(write_config) -> None:  # type: ignore[no-untyped-def]
    problem = build_problem(load_config(write_config()))
    assert problem.data.n == 96
    assert problem.num_classes == 3
    assert problem.device == torch.device("cpu")


def test_hugging_face_style_model_loss_with_dict_batches(write_config, user_code) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"builtin": None, "factory": "./models.py:hf", "kwargs": {}},
                         "data": {"builtin": None, "factory": "./data.py:tokens", "kwargs": {}},
                         "loss": "model"})
    problem = build_problem(load_config(path))
    batch = problem.data.batch(torch.arange(4))
    loss = problem.loss_fn(problem.build_model(), batch)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_map_style_dataset_is_materialised(write_config, user_code) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"builtin": None, "factory": "./models.py:linear",
                                   "kwargs": {}},
                         "data": {"builtin": None, "factory": "./data.py:dataset", "kwargs": {}}})
    problem = build_problem(load_config(path))
    inputs, targets = problem.data.tensors  # type: ignore[misc]
    assert inputs.shape == (40, 4) and targets.tolist()[:4] == [0, 1, 2, 0]


def test_tuple_data(write_config, user_code) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"data": {"builtin": None, "factory": "./data.py:tuple_data",
                                  "kwargs": {"n": 50}}})
    assert build_problem(load_config(path)).data.n == 50


def test_kwargs_typo_in_user_factory_is_a_config_error(write_config, user_code) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"builtin": None, "factory": "./models.py:linear",
                                   "kwargs": {"d_inn": 4}}})
    with pytest.raises(ConfigError) as info:
        build_problem(load_config(path))
    (msg,) = info.value.messages
    assert "model.kwargs: model './models.py:linear' does not take 'd_inn' (did you mean " \
           "'d_in'?)" in msg
    assert msg.startswith(str(path) + ":")


def test_kwargs_typo_in_builtin_is_a_config_error(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"kwargs": {"hiden": [8]}}})
    with pytest.raises(ConfigError, match=r"does not take 'hiden' \(did you mean 'hidden'\?\)"):
        build_problem(load_config(path))


def test_reference_that_does_not_import(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"builtin": None, "factory": "./nowhere.py:build",
                                   "kwargs": {}}})
    with pytest.raises(ConfigError, match=r"model.factory: file './nowhere.py' not found"):
        build_problem(load_config(path))


def test_user_model_that_raises_is_a_user_code_error(write_config, user_code) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"builtin": None, "factory": "./models.py:explodes",
                                   "kwargs": {}}})
    with pytest.raises(UserCodeError, match="the model factory raised RuntimeError: cannot "
                                            "build") as info:
        build_problem(load_config(path))
    assert info.value.exit_code == 3


def test_user_model_returning_the_wrong_thing_is_a_config_error(write_config, user_code) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"builtin": None, "factory": "./models.py:not_a_module",
                                   "kwargs": {}}})
    with pytest.raises(ConfigError, match=r"config.yaml:\d+:\d+: model.factory: the model "
                                          r"factory returned int; expected a torch nn.Module") \
            as info:
        build_problem(load_config(path))
    assert info.value.exit_code == 2


@pytest.mark.parametrize("factory,message", [
    ("./data.py:ragged", r"first dimensions \(samples\) differ: inputs \(10, 4\), targets "
                         r"\(9,\)"),
    ("./data.py:wrong_type", r"data.factory: the data factory returned a list of \(int, int, "
                             r"int\); expected a torch Dataset"),
])
def test_bad_user_data_is_a_config_error(  # type: ignore[no-untyped-def]
        write_config, user_code, factory: str, message: str) -> None:
    path = write_config({"data": {"builtin": None, "factory": factory, "kwargs": {}}})
    with pytest.raises(ConfigError, match=message):
        build_problem(load_config(path))


def test_batch_size_larger_than_dataset(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"sweep": {"batch_sizes": [16, 500]}})
    with pytest.raises(ConfigError, match=r"sweep.batch_sizes\[1\]: batch size 500 is larger "
                                          r"than the dataset \(96 samples\)"):
        build_problem(load_config(path))


def test_builtins_that_do_not_fit_together(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"model": {"kwargs": {"in_features": 7}}})
    with pytest.raises(ConfigError, match="model.kwargs: the model does not fit the data"):
        build_problem(load_config(path))


def test_lr_in_optimizer_kwargs_is_refused(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"optimizer": {"kwargs": {"lr": 0.1}}})
    with pytest.raises(ConfigError, match="optimizer.kwargs.lr: set learning rates under"):
        build_problem(load_config(path))


def test_bad_optimizer_kwarg(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config({"optimizer": {"kwargs": {"momentun": 0.9}}})
    with pytest.raises(ConfigError, match="optimizer.kwargs: sgd: got an unexpected keyword"):
        build_problem(load_config(path))


def test_unavailable_cuda_is_a_config_error(write_config) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    path = write_config({"probe": {"device": "cuda"}})
    with pytest.raises(ConfigError, match="probe.device: 'cuda' requested but no CUDA device"):
        build_problem(load_config(path))
