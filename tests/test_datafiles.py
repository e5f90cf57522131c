"""data: {path: ...}: CSV, Parquet, .npz and .npy files, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from stabcheck.cli import cli
from stabcheck.config import load_config
from stabcheck.errors import ConfigError
from stabcheck.problem import build_problem


def frame(n: int = 64) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)) * [1.0, 10.0, 100.0, 1000.0]
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3],
                         "city": rng.choice(["x", "y"], n), "label": np.arange(n) % 3})


def data_config(write_config, data: dict, **more):
    updates = {"model": {"kwargs": {"in_features": 4, "hidden": [8], "out_features": 3}},
               "data": {"builtin": None, "kwargs": {}, **data}, **more}
    return write_config(updates)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_with_features_target_and_standardize(write_config, tmp_path: Path,
                                                      suffix: str) -> None:
    table = frame()
    sub = tmp_path / "data"
    sub.mkdir()
    if suffix == ".csv":
        table.to_csv(sub / f"train{suffix}", index=False)
    else:
        table.to_parquet(sub / f"train{suffix}", index=False)
    path = data_config(write_config, {"path": f"data/train{suffix}", "target": "label",
                                      "features": ["a", "b", "c", "d"], "standardize": True})
    problem = build_problem(load_config(path))
    x, y = problem.data.tensors
    assert x.dtype == torch.float32 and x.shape == (64, 4)
    assert y.dtype == torch.int64 and y.tolist() == table["label"].tolist()
    assert torch.allclose(x.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(4), atol=1e-4)


def test_string_feature_columns_are_named(write_config, tmp_path: Path) -> None:
    frame().to_csv(tmp_path / "train.csv", index=False)
    path = data_config(write_config, {"path": "train.csv", "target": "label"})
    with pytest.raises(ConfigError, match=r"config.yaml:\d+:\d+: data.features: train.csv: "
                                          r"column\(s\) 'city' are not numeric") as info:
        build_problem(load_config(path))
    assert info.value.exit_code == 2


def test_a_string_target_becomes_class_labels_with_a_note(write_config, tmp_path: Path) -> None:
    table = frame()
    table["label"] = np.where(table["label"] == 0, "no", "yes")
    table.drop(columns="city").to_csv(tmp_path / "train.csv", index=False)
    path = data_config(write_config, {"path": "train.csv", "target": "label"})
    problem = build_problem(load_config(path))
    assert set(problem.data.tensors[1].tolist()) == {0, 1}
    assert problem.notes == ["train.csv: target 'label' read as 2 classes (no, yes)"]


@pytest.mark.parametrize("data,message", [
    ({"path": "nowhere.csv", "target": "label"}, r"data.path: file not found: .*nowhere.csv"),
    ({"path": "train.csv", "target": "lable"},
     r"data.target: train.csv has no column 'lable' \(did you mean 'label'\?\); it has: a, b"),
    ({"path": "train.csv", "target": "label", "features": ["a", "zz"]},
     r"data.features\[1\]: train.csv has no column 'zz'"),
    ({"path": "train.csv", "target": "a", "features": ["b", "c", "d", "label"]},
     r"data.target: train.csv: cross_entropy needs class indices 0, 1, …"),
])
def test_missing_file_column_or_key_is_exit_2_with_its_line(write_config, tmp_path: Path,
                                                             data: dict, message: str) -> None:
    frame().drop(columns="city").to_csv(tmp_path / "train.csv", index=False)
    path = data_config(write_config, data)
    with pytest.raises(ConfigError, match=r"config.yaml:\d+:\d+: " + message) as info:
        build_problem(load_config(path))
    assert info.value.exit_code == 2


def test_npz_keys_and_npy_columns(write_config, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))  # float64: converted with a note
    y = np.arange(40) % 3
    np.savez(tmp_path / "train.npz", x=x, y=y)
    problem = build_problem(load_config(data_config(write_config, {"path": "train.npz",
                                                                   "target": "y"})))
    assert problem.data.tensors[0].dtype == torch.float32
    assert problem.notes == ["train.npz: float64 features converted to float32"]
    with pytest.raises(ConfigError, match=r"data.target: train.npz has no key 'labels'.*it "
                                          r"has: x, y"):
        build_problem(load_config(data_config(write_config, {"path": "train.npz",
                                                             "target": "labels"})))
    np.save(tmp_path / "train.npy", np.column_stack([x, y]).astype(np.float32))
    problem = build_problem(load_config(data_config(write_config, {"path": "train.npy",
                                                                   "target": 4})))
    assert problem.data.tensors[1].tolist() == y.tolist()
    assert torch.equal(problem.data.tensors[0], torch.from_numpy(x.astype(np.float32)))
    with pytest.raises(ConfigError, match=r"data.target: train.npy has 5 columns: a .npy column "
                                          r"is an index 0..4, got 'y'"):
        build_problem(load_config(data_config(write_config, {"path": "train.npy",
                                                             "target": "y"})))


def test_nan_in_the_data_is_a_config_error(write_config, tmp_path: Path) -> None:
    table = frame().drop(columns="city")
    table.loc[5, "b"] = np.nan
    table.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ConfigError, match=r"data.path: train.csv: 1 missing or non-finite "
                                          r"feature value\(s\), the first in row 5 \(column "
                                          r"'b'\); bad data, not a learning-rate problem") as err:
        build_problem(load_config(data_config(write_config, {"path": "train.csv",
                                                             "target": "label"})))
    assert "lower" not in str(err.value)  # not a learning-rate problem: no LR advice


def test_inf_in_the_target_and_in_an_npz_column_name_where(write_config,
                                                           tmp_path: Path) -> None:
    table = frame().drop(columns="city").astype({"label": float})
    table.loc[7, "label"] = np.inf
    table.to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(ConfigError, match=r"data.target: train.csv: the target has 1 missing or "
                                          r"non-finite value\(s\), the first in row 7; bad data"):
        build_problem(load_config(data_config(write_config, {"path": "train.csv",
                                                             "target": "label"},
                                              loss="mse")))
    x = np.ones((32, 4))
    x[3, 2] = -np.inf
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(32) % 3)
    with pytest.raises(ConfigError, match=r"train.npz: 1 missing or non-finite feature "
                                          r"value\(s\), the first in row 3 \(column 2\)"):
        build_problem(load_config(data_config(write_config, {"path": "train.npz",
                                                             "target": "y"})))


def test_nan_in_factory_data_names_the_key_and_sample(write_config, write_module) -> None:
    write_module("nandata.py", """
        import torch

        def build():
            x = torch.ones(64, 4)
            x[9, 1] = float("nan")
            return x, torch.arange(64) % 3
        """)
    path = data_config(write_config, {"factory": "./nandata.py:build"})
    with pytest.raises(ConfigError, match=r"data: the data is not finite: inputs holds 1 "
                                          r"NaN/Inf value\(s\), the first in sample 9 at 1; bad "
                                          r"data, not a learning-rate problem"):
        build_problem(load_config(path))


def test_validate_and_audit_stop_on_nan_data_with_one_line(write_config, tmp_path: Path) -> None:
    table = frame().drop(columns="city")
    table.loc[11, "c"] = np.nan
    table.to_csv(tmp_path / "train.csv", index=False)
    path = data_config(write_config, {"path": "train.csv", "target": "label"})
    runner = CliRunner()
    for command in (["validate", str(path)], ["audit", str(path), "--out",
                                               str(tmp_path / "out")]):
        result = runner.invoke(cli, command, catch_exceptions=False)
        assert result.exit_code == 2, result.stderr
        [line] = [ln for ln in result.stderr.splitlines() if "non-finite" in ln]
        assert "row 11 (column 'c')" in line and "Traceback" not in result.stderr


def test_file_options_without_a_path_and_two_sources(write_config) -> None:
    with pytest.raises(ConfigError, match=r"data: 'target' applies to data files only"):
        load_config(write_config({"data": {"target": "y"}}))
    with pytest.raises(ConfigError, match=r"data: give exactly one of 'builtin' or 'factory' or "
                                          r"'path' \(got builtin and path\)"):
        load_config(write_config({"data": {"path": "x.csv"}}))
    with pytest.raises(ConfigError, match=r"unknown file type; expected one of .csv"):
        load_config(write_config({"data": {"builtin": None, "kwargs": {}, "path": "x.txt"}}))


FACTORIES = """
import numpy as np
import torch
from torch import nn

def numpy_data(n=48):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)), np.arange(n) % 3

def float64_tensors(n=48):
    return torch.randn(n, 4, dtype=torch.float64), torch.arange(n) % 3

def strings():
    return np.array(["a"] * 20), np.zeros(20)

def from_file(path):
    return np.load(path), np.arange(20) % 3

class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
    def forward(self, x):
        out = self.lin(x)
        return out, out.pow(2).mean()

def tuple_model():
    return TupleOut()
"""


def test_numpy_and_float64_factory_data_are_converted_with_a_note(write_config,
                                                                  write_module) -> None:
    write_module("user.py", FACTORIES)
    for factory, note in (("numpy_data", "the data factory's inputs: NumPy array converted to "
                                         "a tensor"),
                          ("float64_tensors", "the data factory's inputs: float64 converted "
                                              "to float32")):
        path = write_config({"data": {"builtin": None, "factory": f"./user.py:{factory}",
                                      "kwargs": {}}})
        problem = build_problem(load_config(path))
        assert problem.data.tensors[0].dtype == torch.float32
        assert note in problem.notes
    path = write_config({"data": {"builtin": None, "factory": "./user.py:strings",
                                  "kwargs": {}}})
    with pytest.raises(ConfigError, match=r"data.factory: inputs is a NumPy array of dtype "
                                          r"<U1; expected numbers"):
        build_problem(load_config(path))


def test_a_model_returning_a_tuple_uses_its_first_element(write_config, write_module) -> None:
    write_module("user.py", FACTORIES)
    path = write_config({"model": {"builtin": None, "factory": "./user.py:tuple_model",
                                   "kwargs": {}}})
    problem = build_problem(load_config(path))
    assert problem.num_classes == 3
    model = problem.build_model()
    x, y = problem.data.tensors
    loss = problem.loss_fn(model, (x[:8], y[:8]))
    expected = torch.nn.functional.cross_entropy(model(x[:8])[0], y[:8])
    assert torch.allclose(loss, expected)


def test_kwargs_naming_existing_files_resolve_from_the_config(write_config, write_module,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    write_module("user.py", FACTORIES)
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "x.npy", np.ones((20, 4), dtype=np.float32))
    path = write_config({"data": {"builtin": None, "factory": "./user.py:from_file",
                                  "kwargs": {"path": "arrays/x.npy"}}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the path is relative to the config, not the cwd
    problem = build_problem(load_config(path))
    assert problem.data.n == 20
