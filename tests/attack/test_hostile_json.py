"""Hostile JSON given to ``compare`` (and ``report``): exit 2 with a message, no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.attack.helpers import TWO_PROBES, one_line_error, report, run


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import yaml

    from tests.conftest import TINY, deep_update

    root = tmp_path_factory.mktemp("hostile_json")
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY, TWO_PROBES)))
    assert run("audit", path, "--out", root / "r").exit_code == 0
    return report(root / "r")


def _with(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    node = out
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1] if not isinstance(node, list) else int(keys[-1])] = value
    return out


WRONG_SHAPES = [("summary", []), ("summary", "x"), ("summary.max_stable_lr", [1]),
                ("summary.max_stable_lr", {"sixteen": 0.1}),
                ("summary.max_stable_lr", {"16": "fast"}), ("summary.lr_sensitivity", {"16": 3}),
                ("probes", {"0": {}}), ("probes", [1, 2]), ("probes.0.batch_size", "16"),
                ("probes.0.lr", None), ("probes.0.status", 5), ("findings", [None]),
                ("findings", [{"code": "SC101", "probes": [[0]], "severity": "error"}]),
                ("schema_version", 2), ("config", 7)]


@pytest.mark.parametrize(("where", "value"), WRONG_SHAPES)
def test_wrong_schema_is_exit_2(good: dict[str, Any], tmp_path: Path, where: str,
                                value: Any) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(good, where, value)))
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(good))
    for args in ((ok, bad), (bad, ok)):
        result = run("compare", *args)
        assert result.exit_code == 2, (where, result.output)
        assert str(bad) in one_line_error(result)


@pytest.mark.parametrize("text", [b"[]", b"null", b"1e999", b'{"schema_version": 1}',
                                  b"[" * 100_000, b'{"schema_version": ' + b"9" * 10_000 + b"}",
                                  b"\xff\xfe\x00garbage", b"", b"{\"a\": NaN}"])
def test_garbage_json_is_exit_2(good: dict[str, Any], tmp_path: Path, text: bytes) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(text)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(good))
    result = run("compare", ok, bad)
    assert result.exit_code == 2, result.output
    one_line_error(result)


def test_huge_numbers_in_a_valid_report_do_not_crash(good: dict[str, Any],
                                                     tmp_path: Path) -> None:
    huge = _with(good, "summary.max_stable_lr", {k: 1e308 for k in
                                                  good["summary"]["max_stable_lr"]})
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(huge))
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(good))
    result = run("compare", path, ok)  # the max stable LR dropped from 1e308
    assert result.exit_code == 1 and "dropped" in result.stdout
