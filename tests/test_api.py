"""The Python API: stabcheck.audit(config, **overrides) and AuditResult.assert_stable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import stabcheck
from tests.conftest import TINY

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def test_the_documented_example_runs_verbatim(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert blocks, "docs/python-api.md has no python example"
    namespace: dict[str, object] = {"tmp_path": tmp_path}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, stabcheck.AuditResult)
    assert result.verdict == "passed" and result.exit_code == 0
    assert (tmp_path / "audit" / "report.json").is_file()


def test_from_stabcheck_import_audit_is_callable(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import stabcheck.audit as module  # the submodule, imported first: it must still be callable
    from stabcheck import audit
    assert audit is module
    result = audit(write_config(), steps=6, lr=0.01, seeds=[0], out_dir=tmp_path / "r")
    assert [p.lr for p in result.probes] == [0.01]
    assert [p.steps_run for p in result.probes] == [6]
    assert result.max_stable_lr == {16: 0.01}
    assert result.results_dir == tmp_path / "r"
    assert result.to_json()["verdict"] == result.verdict


def test_overrides_and_dict_configs_validate_like_the_cli(tmp_path: Path) -> None:
    with pytest.raises(stabcheck.ConfigError) as info:
        stabcheck.audit(dict(TINY), steps=0, out_dir=tmp_path / "r")
    assert info.value.exit_code == 2
    assert str(info.value) == "<command line>: probe.steps: input should be greater than 0, " \
                              "got 0"
    bad = {**TINY, "sweep": {**TINY["sweep"], "batch_sizs": [8]}}
    with pytest.raises(stabcheck.ConfigError, match=r"^<dict>: sweep.batch_sizs: unknown key "
                                                    r"'batch_sizs' \(did you mean "
                                                    r"'batch_sizes'\?\)$"):
        stabcheck.audit(bad, out_dir=tmp_path / "r")
    with pytest.raises(stabcheck.ConfigError, match="not a dotted config key"):
        stabcheck.audit(dict(TINY), overrides={"": 1}, out_dir=tmp_path / "r")


def test_user_code_that_raises_is_exit_3(write_config, write_module, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_module("bad.py", "def build():\n    raise RuntimeError('boom')\n")
    path = write_config({"model": {"builtin": None, "factory": "./bad.py:build", "kwargs": {}}})
    with pytest.raises(stabcheck.UserCodeError, match="the model factory raised RuntimeError: "
                                                      "boom") as info:
        stabcheck.audit(path, out_dir=tmp_path / "r")
    assert info.value.exit_code == 3


def test_assert_stable_reads_like_the_terminal_report(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = stabcheck.audit(write_config(), steps=6, lr=[0.01, 0.1], seeds=[0],
                             out_dir=tmp_path / "r")
    assert result.passed
    result.assert_stable(max_lr_at_least=0.1, at_batch_size=16)
    result.assert_stable()
    with pytest.raises(stabcheck.StabilityAssertionError) as info:
        result.assert_stable(max_lr_at_least=1.0, at_batch_size=16)
    message = str(info.value)
    assert message.startswith("stabcheck: max stable LR at batch size 16 should be at least 1; "
                              "it is 0.1\n")
    assert "Verdict: PASSED" in message and "batch \\ lr" in message  # the terminal report
    with pytest.raises(AssertionError, match=r"batch size 64 was not swept \(swept: 16\)"):
        result.assert_stable(at_batch_size=64)


def test_a_failing_audit_fails_assert_stable(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = stabcheck.audit(write_config(), steps=12, lr=[50.0], seeds=[0],
                             out_dir=tmp_path / "r")
    assert result.verdict == "failed" and result.exit_code == 1
    assert result.max_stable_lr == {16: None}
    assert {p.status for p in result.probes} == {"diverged"}
    with pytest.raises(AssertionError, match=r"^stabcheck: audit failed: .*\n.*stabcheck: max "
                                             r"stable LR at batch size 16 should be at least "
                                             r"0.001; no swept LR was stable"):
        result.assert_stable(max_lr_at_least=1e-3)
