"""Hypothesis fuzzing of configs: every input is a valid config or a ConfigError (exit 2)
whose every message is one line; never another exception, never a traceback."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stabcheck import yamlsafe
from stabcheck.cli import cli
from stabcheck.config import LoadedConfig, load_config
from stabcheck.errors import ConfigError
from tests.conftest import TINY


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# YAML's meaningful characters, so random text reaches the parser's corners.
YAML_TEXT = st.text(alphabet=list("ab_xyz:-[]{},&*!|>'\"#%@`\n\t 0123456789.eE+~?<=\\"),
                    max_size=200)
# Plain values, with no ':' anywhere: a string with one could name a module to import.
SAFE_TEXT = st.text(st.characters(blacklist_characters=":", blacklist_categories=["Cs"]),
                    max_size=20)
SCALARS = (st.none() | st.booleans() | st.integers(-1000, 1000)
           | st.floats(allow_nan=True, allow_infinity=True) | SAFE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(SAFE_TEXT, inner, max_size=4), max_leaves=12)
SCHEMA_KEYS = ["name", "model", "data", "loss", "optimizer", "sweep", "probe", "thresholds",
               "target_lr", "fail_on", "builtin", "factory", "kwargs", "learning_rates",
               "seeds", "batch_sizes", "steps", "timeout_s", "min", "max", "num"]


def check(path: Path) -> LoadedConfig | None:
    """load_config either succeeds or raises a ConfigError of one-line messages."""
    try:
        return load_config(path)
    except ConfigError as exc:
        assert exc.messages and all(m and "\n" not in m for m in exc.messages), exc.messages
        return None


@fuzz(150)
@given(raw=st.binary(max_size=300))
def test_random_bytes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    check(path)


@fuzz(300)
@given(text=YAML_TEXT)
def test_random_yaml_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    check(path)
    with contextlib.suppress(ConfigError):  # the loader alone: data or ConfigError, only
        yamlsafe.loads(text)


@fuzz(200)
@given(data=st.dictionaries(st.sampled_from(SCHEMA_KEYS) | SAFE_TEXT, VALUES, max_size=8))
def test_random_structures(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    check(path)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


LEAF_PATHS = _paths(TINY)


@fuzz(60)
@given(where=st.sampled_from(LEAF_PATHS), value=VALUES)
def test_one_mutation_of_a_valid_config_through_the_cli(tmp_path: Path,
                                                        where: tuple[Any, ...],
                                                        value: Any) -> None:
    cfg = copy.deepcopy(TINY)
    node: Any = cfg
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    check(path)
    result = CliRunner().invoke(cli, ["validate", str(path)], catch_exceptions=False)
    event(f"exit {result.exit_code}")
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    if result.exit_code == 2:
        assert all(line.startswith("error: ") for line in result.stderr.strip().splitlines())
