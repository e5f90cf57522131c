"""Hostile values: every numeric field at 0, negative, NaN, inf, huge, a bool, a string.

Each is refused by the schema with a located one-line message, or accepted and harmless;
never an internal error after user code has run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from stabcheck.config import validate_data
from stabcheck.errors import ConfigError
from stabcheck.thresholds import Thresholds
from stabcheck.yamlsafe import SourceMap
from tests.attack.helpers import TWO_PROBES, one_line_error, run
from tests.conftest import TINY, deep_update

NUMERIC = ["probe.steps", "probe.grad_clip", "probe.warmup_steps", "probe.flush_every",
           "probe.timeout_s", "probe.curvature_every", "probe.curvature_batch", "target_lr",
           "target_batch_size", "data.max_samples", "sweep.learning_rates.min",
           "sweep.learning_rates.max", "sweep.learning_rates.num", "sweep.seeds.0",
           "sweep.batch_sizes.0", "sweep.learning_rates.0"]
NUMERIC += [f"thresholds.{name}" for name in Thresholds.model_fields]
# Fields where 0 is a meaningful setting.
ZERO_OK = {"probe.warmup_steps", "sweep.seeds.0", "thresholds.spike_min_range_fraction",
           "thresholds.stagnation_min_decrease",
           # 0 turns the calibrated noise allowances off (the detectors' pre-calibration rule)
           "thresholds.spike_noise_steps", "thresholds.grad_spike_response_steps",
           "thresholds.adaptive_early_steps", "thresholds.divergence_floor",
           "thresholds.divergence_noise_sigma"}
# Huge but harmless: the probe never clips, the target LR is far off, the data is smaller.
HUGE_OK = {"probe.grad_clip", "target_lr", "target_batch_size", "data.max_samples",
           "sweep.learning_rates.max", "sweep.learning_rates.0", "probe.curvature_batch",
           "sweep.seeds.0", "sweep.batch_sizes.0"}  # a batch over the data: refused at build
HOSTILE: list[Any] = [0, -1, math.nan, math.inf, -math.inf, 10**30, 1e300, True, "0.1"]


def _config(dotted: str, value: Any) -> dict[str, Any]:
    """TINY with ``dotted`` set to ``value`` (``a.b.0`` sets ``a.b`` to ``[value]``)."""
    keys = dotted.split(".")
    if keys[-1] == "0":
        keys, value = keys[:-1], [value]
    update: Any = value
    for key in reversed(keys):
        update = {key: update}
    data = deep_update(TINY, {})
    if dotted.startswith("sweep.learning_rates.") and keys[-1] != "learning_rates":
        data = deep_update(data, {"sweep": {"learning_rates": {"min": 0.01, "max": 1.0,
                                                               "num": 3}}})
    return deep_update(data, update)


@pytest.mark.parametrize("dotted", NUMERIC)
def test_every_numeric_field_refuses_hostile_values(dotted: str) -> None:
    for value in HOSTILE:
        zero = value == 0 and not isinstance(value, bool)
        huge = value in (10**30, 1e300) and not isinstance(value, bool)
        try:
            validate_data(_config(dotted, value), SourceMap("c.yaml"))
        except ConfigError as exc:
            assert not (zero and dotted in ZERO_OK), (dotted, value, str(exc))
            assert "c.yaml:" in str(exc) and "\n" not in str(exc).strip(), str(exc)
        else:  # accepted: only 0 where it means something, or a huge but harmless value
            assert (zero and dotted in ZERO_OK) or (huge and dotted in HUGE_OK), \
                f"{dotted}: {value!r} was accepted"


def test_an_lr_range_of_one_value_with_num_over_1_is_refused() -> None:
    with pytest.raises(ConfigError, match="num must be 1"):
        validate_data(_config("sweep.learning_rates.num", 5) | {
            "sweep": {"learning_rates": {"min": 0.1, "max": 0.1, "num": 5}}}, SourceMap("c"))


def test_optimizer_options_torch_rejects_are_a_config_error(write_config) -> None:
    for kwargs in ({"momentum": -1}, {"momentum": math.nan}, {"weight_decay": math.inf},
                   {"nesterov": True}, {"momentum": 0.9, "dampening": "lots"}):
        result = run("validate", write_config({"optimizer": {"name": "sgd", "kwargs": kwargs}}))
        assert result.exit_code == 2, (kwargs, result.output)
        assert "optimizer.kwargs" in one_line_error(result)
    for kwargs in ({"betas": [0.9, 1.5]}, {"betas": [0.9, math.nan]}, {"eps": -1.0}):
        result = run("validate", write_config({"optimizer": {"name": "adam", "kwargs": kwargs}}))
        assert result.exit_code == 2, (kwargs, result.output)


def test_a_very_long_name_stays_a_short_directory(write_config, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("audit", write_config(deep_update(TWO_PROBES, {"name": "n" * 199})))
    assert result.exit_code == 0, result.output
    (made,) = (tmp_path / "stabcheck-results").iterdir()
    assert len(made.name) < 120
    too_long = run("validate", write_config({"name": "n" * 5000}))
    assert too_long.exit_code == 2 and "name" in one_line_error(too_long)


def test_unicode_and_path_traversal_in_name_stay_inside_the_results_root(
        write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("audit", write_config(deep_update(TWO_PROBES, {"name": "../../é\x1b[31m/.."})))
    assert result.exit_code == 0, result.output
    (made,) = (tmp_path / "stabcheck-results").iterdir()
    assert made.parent == tmp_path / "stabcheck-results" and ".." not in made.name


def test_a_huge_sweep_is_refused_with_the_limit_unless_asked_for(write_config) -> None:
    path = write_config({"sweep": {"learning_rates": {"min": 1e-4, "max": 1.0, "num": 1000},
                                   "seeds": list(range(21))}})
    result = run("audit", path)
    assert result.exit_code == 2
    assert "21,000 probes" in one_line_error(result) and "10,000" in result.stderr
    assert "--large-sweep" in result.stderr


@pytest.mark.parametrize("grace", ["inf", "nan", "-1", "1e9"])
def test_grace_must_be_finite_and_bounded(write_config, grace: str) -> None:
    result = run("audit", write_config(TWO_PROBES), "--grace", grace)
    assert result.exit_code == 2 and "--grace" in result.stderr


def test_huge_but_harmless_values_run_to_a_verdict(write_config, tmp_path: Path) -> None:
    path = write_config(deep_update(TWO_PROBES, {
        "probe": {"grad_clip": 1e300, "timeout_s": 1e6}, "target_lr": 1e300,
        "target_batch_size": 10**12, "data": {"max_samples": 10**15}}))
    result = run("audit", path, "--out", tmp_path / "r", "--executor", "local")
    assert result.exit_code in (0, 1), result.output
    assert "internal error" not in result.output
