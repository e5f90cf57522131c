"""Config validation: every error at once, with FILE:LINE:COL, key path and a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from stabcheck.config import LRRange, load_config
from stabcheck.errors import ConfigError

VALID = """\
name: t
model:
  builtin: mlp
  kwargs: {in_features: 4, hidden: [8], out_features: 3}
data:
  builtin: blobs
  kwargs: {n_samples: 96, n_features: 4, n_classes: 3}
sweep:
  learning_rates: [0.01, 0.1]
  seeds: [0]
  batch_sizes: [16]
"""


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.messages


def test_valid_config_loads(write_config) -> None:
    loaded = load_config(write_config(text=VALID))
    assert loaded.config.sweep.lr_values() == [0.01, 0.1]
    assert loaded.config.probe.steps == 200  # default


def test_typo_gets_line_column_and_suggestion(write_config) -> None:
    path = write_config(text=VALID.replace("learning_rates", "lerning_rates"))
    assert errors_of(path) == [
        f"{path}:8:1: sweep: missing required key 'learning_rates'",
        f"{path}:9:3: sweep.lerning_rates: unknown key 'lerning_rates' "
        "(did you mean 'learning_rates'?)",
    ]


def test_top_level_typo(write_config) -> None:
    path = write_config(text=VALID + "optimiser: {name: sgd}\n")
    assert errors_of(path) == [
        f"{path}:12:1: optimiser: unknown key 'optimiser' (did you mean 'optimizer'?)"]


def test_wrong_type_points_at_the_value(write_config) -> None:
    path = write_config(text=VALID + "probe:\n  steps: lots\n")
    (msg,) = errors_of(path)
    assert msg.startswith(f"{path}:13:10: probe.steps: input should be a valid integer")
    assert "'lots'" in msg


def test_every_error_is_reported_at_once(write_config) -> None:
    text = (VALID.replace("builtin: mlp", "builtin: mpl")
            .replace("[0.01, 0.1]", "[0.01, -0.1]") + "fail_on: sometimes\n")
    msgs = errors_of(write_config(text=text))
    assert len(msgs) == 3
    assert "model.builtin: unknown value 'mpl'" in msgs[0] and "(did you mean 'mlp'?)" in msgs[0]
    assert ":9:26: sweep.learning_rates[1]: input should be greater than 0" in msgs[1]
    assert ":12:10: fail_on: unknown value 'sometimes'" in msgs[2]


def test_missing_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (msg,) = errors_of(tmp_path)
    assert "is a directory" in msg


def test_yaml_that_is_not_a_mapping(write_config) -> None:
    (msg,) = errors_of(write_config(text="- 1\n- 2\n"))
    assert msg.endswith("config must be a mapping of keys, got a list")


def test_empty_file(write_config) -> None:
    (msg,) = errors_of(write_config(text="# nothing\n"))
    assert msg.endswith("config is empty")


def test_python_tag_is_refused(write_config) -> None:
    (msg,) = errors_of(write_config(text=VALID + "x: !!python/object/apply:os.system [ls]\n"))
    assert ":12:4: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in msg


@pytest.mark.parametrize("key,value,expected", [
    ("learning_rates", "[]", "sweep.learning_rates: is empty"),
    ("seeds", "[]", "sweep.seeds: is empty"),
    ("batch_sizes", "[]", "sweep.batch_sizes: is empty"),
    ("learning_rates", "[-0.1]", "sweep.learning_rates[0]: input should be greater than 0"),
    ("learning_rates", "{min: 1, max: 0.1, num: 3}",
     "sweep.learning_rates: max (0.1) is smaller than min (1.0)"),
    ("batch_sizes", "[16, 16]", "sweep.batch_sizes: has duplicate values"),
])
def test_bad_sweeps(write_config, key: str, value: str, expected: str) -> None:
    text = VALID.replace(
        {"learning_rates": "learning_rates: [0.01, 0.1]", "seeds": "seeds: [0]",
         "batch_sizes": "batch_sizes: [16]"}[key], f"{key}: {value}")
    (msg,) = errors_of(write_config(text=text))
    assert expected in msg


def test_model_needs_exactly_one_source(write_config) -> None:
    text = VALID.replace("  builtin: mlp\n", "  builtin: mlp\n  factory: './m.py:build'\n")
    (msg,) = errors_of(write_config(text=text))
    assert "model: give exactly one of 'builtin' or 'factory'" in msg


def test_malformed_reference(write_config) -> None:
    text = VALID.replace("  builtin: mlp\n", "  factory: 'models.build'\n")
    (msg,) = errors_of(write_config(text=text))
    assert "'models.build' is not a reference" in msg


def test_log_spaced_range() -> None:
    assert LRRange(min=1e-4, max=1.0, num=5).values() == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def test_overrides_apply_and_are_located(write_config) -> None:
    path = write_config(text=VALID)
    loaded = load_config(path, overrides={"sweep.seeds": [3, 4], "probe.steps": 7})
    assert loaded.config.sweep.seeds == [3, 4]
    assert loaded.config.probe.steps == 7
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"sweep.learning_rates": [-1.0]})
    assert info.value.messages == [
        "<command line>: sweep.learning_rates[0]: input should be greater than 0, got -1.0"]


def test_bad_device_and_optimizer_names(write_config) -> None:
    text = VALID + "optimizer: {name: adm}\nprobe: {device: gpu}\n"
    msgs = errors_of(write_config(text=text))
    assert "optimizer.name: unknown value 'adm'" in msgs[0] and "did you mean 'adam'" in msgs[0]
    assert "probe.device: unknown device 'gpu'" in msgs[1]
