"""Corrupted journals: ``--resume``, ``report`` and ``compare`` use what is valid and say what
they skipped, or refuse with the line number — never a traceback, never a wrong report."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from stabcheck.errors import StabcheckError
from stabcheck.journal import JOURNAL_NAME, Journal, read_journal
from tests.attack.helpers import TWO_PROBES, journal_lines, one_line_error, report, run
from tests.conftest import deep_update


@pytest.fixture
def finished(write_config, tmp_path: Path):
    """A finished two-probe audit: (config path, results directory, its journal's lines)."""
    path = write_config(TWO_PROBES)
    out = tmp_path / "r"
    assert run("audit", path, "--out", out).exit_code == 0
    return path, out, (out / JOURNAL_NAME).read_text().splitlines(keepends=True)


def _probe_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.startswith('{"type":"probe"')]


def _statuses(out: Path) -> list[tuple[float, str]]:
    return sorted((p["lr"], p["status"]) for p in report(out)["probes"])


def test_truncated_last_line_is_cut_and_the_probe_rerun(finished) -> None:
    path, out, lines = finished
    before = _statuses(out)
    last = _probe_lines(lines)[-1]
    (out / JOURNAL_NAME).write_text("".join(lines[:last]) + lines[last][:40])  # a kill mid-write
    assert run("audit", path, "--resume", out).exit_code == 0
    assert _statuses(out) == before
    assert sum(1 for e in journal_lines(out) if e["type"] == "probe") == 2  # none duplicated


def test_complete_but_unparsable_last_line_is_skipped_said_and_cut_on_resume(finished) -> None:
    path, out, lines = finished
    before = _statuses(out)
    last = _probe_lines(lines)[-1]
    (out / JOURNAL_NAME).write_text("".join(lines[:last]) + '{"type":"probe","lr":\n')
    shown = run("report", out)
    assert shown.exit_code == 3 and "skipped an unreadable last line" in shown.stderr
    resumed = run("audit", path, "--resume", out)
    assert resumed.exit_code == 0, resumed.output
    assert _statuses(out) == before
    # the journal is readable again by every command
    assert run("report", out).exit_code == 0
    assert run("compare", out, out).exit_code == 0
    read_journal(out)  # raises on any unreadable line


@pytest.mark.parametrize("garbage", [b"not json at all\n", b'{"type":"probe","lr":"x"}\n',
                                     b"[1, 2, 3]\n", b'{"type":"init","seed":"zero"}\n',
                                     b'{"type":"probe","lr":0.1,"seed":0}\n',
                                     b'{"type":"event","x":' + b"[" * 100_000 + b"\n",
                                     b'{"type":"event","n":' + b"9" * 5000 + b"}\n",
                                     b"\xff\xfe binary\n"])
def test_a_bad_line_mid_file_is_refused_with_its_line_number(finished, garbage: bytes) -> None:
    path, out, lines = finished
    first = _probe_lines(lines)[0]
    (out / JOURNAL_NAME).write_bytes("".join(lines[:first]).encode() + garbage
                                     + "".join(lines[first:]).encode())
    (out / "report.json").unlink()  # compare then reads the journal
    for command in (["report", out], ["audit", path, "--resume", out], ["compare", out, out]):
        result = run(*command)
        assert result.exit_code == 3, (command, result.output)
        assert f"{JOURNAL_NAME}:{first + 1}: corrupt journal line" in one_line_error(result)


def test_a_probe_line_from_another_config_is_refused(finished, write_config,
                                                     tmp_path: Path) -> None:
    _path, out, lines = finished
    other = tmp_path / "other"
    assert run("audit", write_config(deep_update(TWO_PROBES, {"probe": {"steps": 7}}),
                                     name="other.yaml"), "--out", other).exit_code == 0
    foreign = (other / JOURNAL_NAME).read_text().splitlines(keepends=True)
    (out / JOURNAL_NAME).write_text("".join(lines) + foreign[_probe_lines(foreign)[0]])
    result = run("report", out)
    assert result.exit_code == 3
    assert "does not belong to this journal's config" in one_line_error(result)


def test_a_second_header_does_not_silently_drop_the_probes_before_it(finished) -> None:
    _path, out, lines = finished
    (out / JOURNAL_NAME).write_text("".join(lines) + lines[0])
    result = run("report", out)
    assert result.exit_code == 3 and "a second header line" in one_line_error(result)


def test_a_huge_valid_line_is_read(finished) -> None:
    _path, out, lines = finished
    event = json.dumps({"type": "event", "event": "note", "padding": "x" * 20_000_000})
    (out / JOURNAL_NAME).write_text("".join(lines) + event + "\n")
    assert run("report", out).exit_code == 0


def test_disk_full_during_a_journal_write_says_so_and_where(finished, monkeypatch) -> None:
    _path, out, _ = finished
    journal = Journal(out)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StabcheckError, match=r"probes.jsonl: cannot write the journal: disk "
                       r"full; .* --resume"):
        journal.append_event({"event": "x"})


def test_disk_full_at_the_start_is_one_line(write_config, tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    out = tmp_path / "r"
    out.mkdir()
    (out / JOURNAL_NAME).symlink_to("/dev/full")  # every write: ENOSPC
    result = run("audit", write_config(TWO_PROBES), "--out", out, "--overwrite")
    assert result.exit_code in (2, 3) and "disk full" in one_line_error(result)
