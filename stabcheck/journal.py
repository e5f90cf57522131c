"""The append-only journal of an audit: ``DIR/probes.jsonl``.

Every finished probe is appended as one JSON line, flushed and fsynced, before anything else
happens, so a crash, a kill or Ctrl-C never loses a finished probe. The first line is a
header naming the config digest; ``--resume`` refuses a journal made from another config.
Reports are built from the journal alone.

Line types: ``header`` (once, first), ``probe`` (one per finished probe), ``init`` (the
before-training checks of one seed), ``event`` (notes such as an engine fallback),
``settings`` (the verdict settings a ``--resume`` ran with; later ones win).

Reading is strict where silence would mislead: a probe line whose key does not belong to the
header's config, a second header, or an unreadable line before the last one is refused with
its line number. Only an unreadable *last* line (a write cut by a kill or a full disk) is
dropped, and said so; ``--resume`` cuts it before appending.

A results directory is locked (``fcntl.flock`` on ``DIR/.stabcheck.lock``) while an audit
writes to it, so two audits never interleave their lines in one journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabcheck.errors import ConfigError, StabcheckError, os_reason, writing
from stabcheck.plan import ProbeSpec
from stabcheck.records import OUTCOMES, ProbeRecord

JOURNAL_NAME = "probes.jsonl"
REPORT_NAME = "report.json"
LOCK_NAME = ".stabcheck.lock"
JOURNAL_VERSION = 1
# The config keys that only change the verdict (outside the config digest): on --resume the
# current config's values win, recorded in a ``settings`` line.
VERDICT_KEYS = ("fail_on", "thresholds", "target_lr", "target_batch_size", "name")


@dataclass
class JournalContents:
    """What a journal holds, with later lines for the same probe key winning."""

    header: dict[str, Any]
    probes: dict[str, ProbeRecord] = field(default_factory=dict)
    init: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    truncated_tail: bool = False
    tail_offset: int | None = None  # byte offset where an unreadable last line starts


@contextlib.contextmanager
def lock_directory(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the results directory ``directory`` (created if needed).

    A second audit, an ``--overwrite`` or a ``--resume`` of the same directory while this
    one runs is refused at once with a one-line message (exit 2).
    """
    with writing(directory):
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{directory}: --out names a file, not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(f"{directory}: another stabcheck audit is using this results "
                              f"directory{who}; wait for it to finish, or choose another "
                              "--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class Journal:
    """Appends records durably to ``DIR/probes.jsonl``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / JOURNAL_NAME

    @classmethod
    def create(cls, directory: Path, header: dict[str, Any], overwrite: bool = False) -> Journal:
        """Start a new journal; refuse to clobber an existing audit or report unless
        ``overwrite``."""
        journal = cls(directory)
        report = directory / REPORT_NAME
        if not overwrite:
            for existing in (journal.path, report):
                if existing.exists():
                    raise ConfigError(f"{directory}: already holds an audit ({existing.name});"
                                      " pass --resume to continue it, --overwrite to replace "
                                      "it, or choose another --out")
        with writing(journal.path):
            directory.mkdir(parents=True, exist_ok=True)
            report.unlink(missing_ok=True)
            with journal.path.open("w", encoding="utf-8") as fh:
                _write_line(fh, {"type": "header", "journal_version": JOURNAL_VERSION, **header})
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
        if contents.tail_offset is not None:
            journal._cut(contents.tail_offset)
        return journal, contents

    def _cut(self, offset: int) -> None:
        # A kill mid-write leaves an unreadable last line; cut it so the next append starts
        # clean.
        with writing(self.path), self.path.open("r+b") as fh:
            fh.truncate(offset)
            fh.flush()
            os.fsync(fh.fileno())

    def append_probe(self, record: ProbeRecord) -> None:
        """Durably append one finished probe."""
        self._append({"type": "probe", **record.field_values()})

    def append_init(self, seed: int, report: dict[str, Any]) -> None:
        """Durably append one seed's before-training checks."""
        self._append({"type": "init", "seed": seed, **report})

    def append_event(self, event: dict[str, Any]) -> None:
        """Durably append a note (engine fallback, interruption, …)."""
        self._append({"type": "event", **event})

    def append_settings(self, settings: dict[str, Any]) -> None:
        """Durably record the verdict settings a resumed audit runs with."""
        self._append({"type": "settings", "config": settings})

    def _append(self, data: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                _write_line(fh, data)
        except OSError as exc:
            raise StabcheckError(
                f"{self.path}: cannot write the journal: {os_reason(exc)}; the probes "
                f"journaled so far are kept: make room, then run with --resume "
                f"{self.directory}") from None


def _write_line(fh: Any, data: dict[str, Any]) -> None:
    fh.write(json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def read_journal(directory: Path) -> JournalContents:
    """Read a journal, tolerating an unreadable last line (from a kill mid-write).

    Anything else that is wrong — a corrupt line before the last, a probe from another
    config, a second header — is refused with its line number (exit 3).
    """
    path = directory / JOURNAL_NAME
    if not path.exists():
        raise ConfigError(f"{directory}: not a stabcheck results directory (no {JOURNAL_NAME})")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise StabcheckError(f"{path}: cannot read the journal: {os_reason(exc)}") from None
    lines = blob.split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    contents: JournalContents | None = None
    offset = 0
    for i, raw in enumerate(lines):
        number, start = i + 1, offset
        offset += len(raw) + 1
        if not raw.strip():
            continue
        data, problem = _parse(raw)
        if problem is not None:
            if i == last and contents is not None:  # the last line, cut by a kill: drop it
                contents.truncated_tail, contents.tail_offset = True, start
                contents.events.append({"event": "journal", "message": (
                    f"{path.name}:{number}: skipped an unreadable last line (a write cut "
                    "short by a kill or a full disk)")})
                continue
            raise StabcheckError(f"{path}:{number}: corrupt journal line ({problem})")
        kind = data.pop("type", None)
        if kind == "header":
            if contents is not None:
                raise StabcheckError(f"{path}:{number}: corrupt journal: a second header line "
                                     "(two audits wrote to this directory); start a new --out")
            if not isinstance(data.get("config"), dict):
                raise StabcheckError(f"{path}:{number}: corrupt journal line (a header "
                                     "without its config)")
            contents = JournalContents(header=data)
        elif contents is None:
            raise StabcheckError(f"{path}:1: journal has no header line")
        elif kind == "probe":
            problem = _probe_problem(data, contents.header.get("config_digest"))
            if problem:
                raise StabcheckError(f"{path}:{number}: corrupt journal line ({problem})")
            record = ProbeRecord.from_dict(data)
            contents.probes[record.key] = record
        elif kind == "init":
            if not _is_int(data.get("seed")):
                raise StabcheckError(f"{path}:{number}: corrupt journal line (an init line "
                                     "without an integer seed)")
            contents.init[int(data["seed"])] = data
        elif kind == "event":
            contents.events.append(data)
        elif kind == "settings":
            if not isinstance(data.get("config"), dict):
                raise StabcheckError(f"{path}:{number}: corrupt journal line (settings "
                                     "without a mapping)")
            contents.header["config"].update(
                {k: v for k, v in data["config"].items() if k in VERDICT_KEYS})
    if contents is None:
        raise StabcheckError(f"{path}: empty journal")
    return contents


def _parse(raw: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        return {}, "not UTF-8"
    except RecursionError:
        return {}, "nested too deeply"
    except ValueError as exc:  # JSONDecodeError, and an integer too long to convert
        return {}, f"not JSON: {exc}"
    if not isinstance(data, dict):
        return {}, "not a JSON object"
    return data, None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _probe_problem(data: dict[str, Any], digest: Any) -> str | None:
    """Why a probe line cannot be used, or ``None``."""
    if not _is_number(data.get("lr")) or data["lr"] <= 0:
        return "a probe without a valid lr"
    for name in ("seed", "batch_size", "index", "steps_planned", "steps_run"):
        if not _is_int(data.get(name)):
            return f"a probe without an integer {name}"
    if data.get("outcome") not in OUTCOMES:
        return f"a probe with an unknown outcome {str(data.get('outcome'))[:40]!r}"
    trace = data.get("trace", {})
    if not isinstance(trace, dict) or not all(
            isinstance(v, list) and all(x is None or _is_number(x) for x in v)
            for v in trace.values()):
        return "a probe whose trace is not lists of numbers"
    for name in ("layer_names", "layer_grad_norms", "notes"):
        if not isinstance(data.get(name, []), list):
            return f"a probe whose {name} is not a list"
    for name in ("error", "curvature"):
        if not isinstance(data.get(name) or {}, dict):
            return f"a probe whose {name} is not a mapping"
    spec = ProbeSpec(batch_size=data["batch_size"], lr=float(data["lr"]), seed=data["seed"])
    if not isinstance(digest, str) or data.get("key") != spec.key(digest):
        return (f"probe {spec.label} does not belong to this journal's config (digest "
                f"{digest}): a line from another audit")
    return None
