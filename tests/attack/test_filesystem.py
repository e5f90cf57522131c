"""The file system: outputs checked before the audit, the journal and an existing report never
clobbered, report.json written atomically, --out naming a file, a symlinked directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stabcheck.report.json_report import write_atomic
from tests.attack.helpers import TWO_PROBES, one_line_error, report, run


@pytest.fixture
def config(write_config):
    return write_config(TWO_PROBES)


def test_unwritable_outputs_are_refused_before_the_audit_runs(config, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for flag in (["-o", f"junit={blocker}/junit.xml"], ["--traces", f"{blocker}/t.csv"],
                 ["-o", str(tmp_path)]):
        out = tmp_path / f"r{len(flag[1])}"
        result = run("audit", config, "--out", out, *flag)
        assert result.exit_code == 2, (flag, result.output)
        one_line_error(result)
        assert not out.exists()  # refused up front: no probe ran, no directory was made


def test_outputs_naming_the_journal_are_refused(config, tmp_path: Path) -> None:
    out = tmp_path / "r"
    for flag in (["-o", f"json={out}/probes.jsonl"], ["--traces", f"{out}/probes.jsonl"]):
        result = run("audit", config, "--out", out, *flag)
        assert result.exit_code == 2 and "journal" in one_line_error(result)
    assert run("audit", config, "--out", out).exit_code == 0
    before = (out / "probes.jsonl").read_bytes()
    result = run("report", out, "-o", f"json={out}/probes.jsonl")
    assert result.exit_code == 2 and (out / "probes.jsonl").read_bytes() == before


def test_an_existing_report_is_kept_without_overwrite(config, tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.json").write_text("precious")
    result = run("audit", config, "--out", out)
    assert result.exit_code == 2 and "already holds an audit" in one_line_error(result)
    assert (out / "report.json").read_text() == "precious"
    assert run("audit", config, "--out", out, "--overwrite").exit_code == 0
    assert report(out)["verdict"] == "passed"


def test_out_naming_a_file_is_one_line(config, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    result = run("audit", config, "--out", target)
    assert result.exit_code == 2 and "names a file" in one_line_error(result)


def test_a_symlinked_results_directory_works(config, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert run("audit", config, "--out", tmp_path / "link").exit_code == 0
    assert (real / "report.json").is_file() and (real / "probes.jsonl").is_file()


def test_report_json_is_replaced_atomically(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.json"
    write_atomic(path, "old\n")

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(path, "new and longer\n")
    assert path.read_text() == "old\n"  # a failed write leaves the old report whole
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_results_directory_is_one_line(config, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = run("audit", config, "--out", out)
        assert result.exit_code == 2 and "cannot write" in one_line_error(result)
    finally:
        out.chmod(0o700)
