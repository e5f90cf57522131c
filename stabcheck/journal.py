"""The append-only journal of an audit: ``DIR/probes.jsonl``.

Every finished probe is appended as one JSON line, flushed and fsynced, before anything else
happens, so a crash, a kill or Ctrl-C never loses a finished probe. The first line is a
header naming the config digest; ``--resume`` refuses a journal made from another config.
Reports are built from the journal alone.

Line types: ``header`` (once, first), ``probe`` (one per finished probe), ``init`` (the
before-training checks of one seed), ``event`` (notes such as an engine fallback).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabcheck.errors import ConfigError, StabcheckError
from stabcheck.records import ProbeRecord

JOURNAL_NAME = "probes.jsonl"
REPORT_NAME = "report.json"
JOURNAL_VERSION = 1


@dataclass
class JournalContents:
    """What a journal holds, with later lines for the same probe key winning."""

    header: dict[str, Any]
    probes: dict[str, ProbeRecord] = field(default_factory=dict)
    init: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    truncated_tail: bool = False


class Journal:
    """Appends records durably to ``DIR/probes.jsonl``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME

    @classmethod
    def create(cls, directory: Path, header: dict[str, Any], overwrite: bool = False) -> Journal:
        """Start a new journal; refuse to clobber an existing audit unless ``overwrite``."""
        journal = cls(directory)
        if journal.path.exists() and not overwrite:
            raise ConfigError(f"{directory}: already holds an audit ({JOURNAL_NAME}); pass "
                              "--resume to continue it, --overwrite to replace it, or choose "
                              "another --out")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with journal.path.open("w", encoding="utf-8") as fh:
                _write_line(fh, {"type": "header", "journal_version": JOURNAL_VERSION, **header})
        except OSError as exc:
            raise ConfigError(f"{directory}: cannot write results: {exc.strerror or exc}"
                              ) from None
        (directory / REPORT_NAME).unlink(missing_ok=True)
        return journal

    @classmethod
    def resume(cls, directory: Path, config_digest: str) -> tuple[Journal, JournalContents]:
        """Reopen a journal for appending, after checking it belongs to this config."""
        journal = cls(directory)
        if not journal.path.exists():
            raise ConfigError(f"{directory}: nothing to resume (no {JOURNAL_NAME})")
        contents = read_journal(directory)
        found = contents.header.get("config_digest")
        if found != config_digest:
            raise ConfigError(
                f"{directory}: cannot resume: the audit there was run with a different config "
                f"(digest {found} here, {config_digest} now); start a new --out instead")
        if contents.truncated_tail:
            journal._drop_partial_tail()
        return journal, contents

    def _drop_partial_tail(self) -> None:
        # A kill mid-write leaves a partial last line; cut it so the next append starts clean.
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        with self.path.open("r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())

    def append_probe(self, record: ProbeRecord) -> None:
        """Durably append one finished probe."""
        self._append({"type": "probe", **record.to_dict()})

    def append_init(self, seed: int, report: dict[str, Any]) -> None:
        """Durably append one seed's before-training checks."""
        self._append({"type": "init", "seed": seed, **report})

    def append_event(self, event: dict[str, Any]) -> None:
        """Durably append a note (engine fallback, interruption, …)."""
        self._append({"type": "event", **event})

    def _append(self, data: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            _write_line(fh, data)


def _write_line(fh: Any, data: dict[str, Any]) -> None:
    fh.write(json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def read_journal(directory: Path) -> JournalContents:
    """Read a journal, tolerating a truncated last line (from a kill mid-write)."""
    path = directory / JOURNAL_NAME
    if not path.exists():
        raise ConfigError(f"{directory}: not a stabcheck results directory (no {JOURNAL_NAME})")
    lines = path.read_bytes().split(b"\n")
    contents: JournalContents | None = None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number >= len(lines) - 1:  # the last line, cut by a kill: drop it
                if contents is not None:
                    contents.truncated_tail = True
                continue
            raise StabcheckError(f"{path}:{number}: corrupt journal line") from None
        kind = data.pop("type", None)
        if kind == "header":
            contents = JournalContents(header=data)
        elif contents is None:
            raise StabcheckError(f"{path}:1: journal has no header line")
        elif kind == "probe":
            record = ProbeRecord.from_dict(data)
            contents.probes[record.key] = record
        elif kind == "init":
            contents.init[int(data["seed"])] = data
        elif kind == "event":
            contents.events.append(data)
    if contents is None:
        raise StabcheckError(f"{path}: empty journal")
    return contents
