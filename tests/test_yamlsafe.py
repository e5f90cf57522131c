"""The hardened YAML loader: positions, tags, caps, duplicates, encodings."""

from __future__ import annotations

import pytest

from stabcheck import yamlsafe
from stabcheck.errors import ConfigError


def test_positions_of_keys_and_values() -> None:
    data, source = yamlsafe.loads("a: 1\nsweep:\n  seeds: [0, 1]\n", "c.yaml")
    assert data == {"a": 1, "sweep": {"seeds": [0, 1]}}
    assert source.keys[("sweep", "seeds")] == yamlsafe.Mark(3, 3)
    assert source.values[("sweep", "seeds", 1)] == yamlsafe.Mark(3, 14)
    assert source.format(("sweep", "seeds", 1), "bad") == "c.yaml:3:14: sweep.seeds[1]: bad"


def test_scientific_notation_without_dot_is_a_float() -> None:
    data, _ = yamlsafe.loads("lr: 1e-4\nother: 3E2\n")
    assert data == {"lr": 1e-4, "other": 300.0}


@pytest.mark.parametrize("text", [
    "a: !!python/object/apply:os.system ['echo hi']\n",
    "a: !!python/name:os.system\n",
    "a: !custom 3\n",
    "a: !!binary aGVsbG8=\n",
])
def test_non_plain_tags_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="is not allowed"):
        yamlsafe.loads(text, "x.yaml")


def test_duplicate_keys_are_an_error() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:3:1: duplicate key 'a' \(first defined at "
                                          r"line 1\)"):
        yamlsafe.loads("a: 1\nb: 2\na: 3\n", "x.yaml")


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for name in "bcdefgh":
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
        prev = name
    with pytest.raises(ConfigError, match="alias bomb"):
        yamlsafe.loads("\n".join(lines) + "\n")


def test_deep_nesting_is_refused() -> None:
    text = "a: " + "[" * 200 + "]" * 200 + "\n"
    with pytest.raises(ConfigError, match="nesting"):
        yamlsafe.loads(text)


def test_non_utf8_names_the_position() -> None:
    with pytest.raises(ConfigError, match=r"f.yaml:2:7: file is not valid UTF-8 \(byte 0xff\)"):
        yamlsafe.loads(b"a: 1\nname: \xff\n", "f.yaml")


def test_size_cap(tmp_path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * yamlsafe.MAX_BYTES + b"\n")
    with pytest.raises(ConfigError, match="cap"):
        yamlsafe.load(path)


def test_merge_keys_work() -> None:
    data, _ = yamlsafe.loads("base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  y: 3\n")
    assert data["thing"] == {"x": 1, "y": 3}


def test_syntax_error_has_position() -> None:
    with pytest.raises(ConfigError, match=r"^s.yaml:2:\d+: invalid YAML"):
        yamlsafe.loads("a: [1, 2\nb: 3\n", "s.yaml")
