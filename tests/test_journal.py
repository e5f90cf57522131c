"""The append-only journal: durable lines, truncated tails, config digests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stabcheck.errors import ConfigError
from stabcheck.journal import JOURNAL_NAME, Journal, read_journal
from stabcheck.plan import ProbeSpec
from stabcheck.records import ProbeRecord


def key(index: int, digest: str = "abc") -> str:
    return ProbeSpec(batch_size=8, lr=0.1 * (index + 1), seed=0).key(digest)


def record(index: int, outcome: str = "completed", digest: str = "abc") -> ProbeRecord:
    return ProbeRecord(lr=0.1 * (index + 1), seed=0, batch_size=8, index=index,
                       key=key(index, digest), outcome=outcome, steps_planned=3, steps_run=3,
                       trace={"loss": [1.0, 0.5, None]})


def test_round_trip(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, {"config_digest": "abc", "config": {}})
    journal.append_probe(record(0))
    journal.append_probe(record(1, "nonfinite"))
    journal.append_init(0, {"initial_loss": 1.1})
    contents = read_journal(tmp_path)
    assert contents.header["config_digest"] == "abc"
    assert [r.outcome for r in contents.probes.values()] == ["completed", "nonfinite"]
    assert contents.probes[key(0)].trace["loss"] == [1.0, 0.5, None]
    assert contents.init[0]["initial_loss"] == 1.1


def test_a_probe_line_is_the_records_plain_data(tmp_path: Path) -> None:
    """The journal serialises the record's fields without :meth:`to_dict`'s deep copy: the
    line is the same JSON, nested lists and dicts included."""
    full = record(0)
    full.layer_names, full.layer_grad_norms = ["fc1", "fc2"], [[0.5, None], [0.25, 1.0]]
    full.curvature = {"lipschitz_init": 2.0, "steps": [0], "sharpness": [None]}
    full.error, full.notes = {"type": "ValueError", "message": "m"}, ["a note"]
    journal = Journal.create(tmp_path, {"config_digest": "abc", "config": {}})
    journal.append_probe(full)
    line = (tmp_path / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()[-1]
    assert json.loads(line) == {"type": "probe", **full.to_dict()}
    assert read_journal(tmp_path).probes[full.key] == full


def test_truncated_last_line_is_tolerated_and_cut_on_resume(tmp_path: Path) -> None:
    journal = Journal.create(tmp_path, {"config_digest": "abc", "config": {}})
    journal.append_probe(record(0))
    with (tmp_path / JOURNAL_NAME).open("a") as fh:
        fh.write('{"type": "probe", "lr": 0.2, "se')  # a kill mid-write
    contents = read_journal(tmp_path)
    assert list(contents.probes) == [key(0)] and contents.truncated_tail
    journal, contents = Journal.resume(tmp_path, "abc")
    journal.append_probe(record(1))
    assert list(read_journal(tmp_path).probes) == [key(0), key(1)]


def test_resume_refuses_another_config(tmp_path: Path) -> None:
    Journal.create(tmp_path, {"config_digest": "abc", "config": {}})
    with pytest.raises(ConfigError, match="different config"):
        Journal.resume(tmp_path, "def")


def test_create_refuses_to_clobber(tmp_path: Path) -> None:
    Journal.create(tmp_path, {"config_digest": "abc", "config": {}})
    with pytest.raises(ConfigError, match="already holds an audit"):
        Journal.create(tmp_path, {"config_digest": "abc", "config": {}})


def test_not_a_results_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a stabcheck results directory"):
        read_journal(tmp_path)
