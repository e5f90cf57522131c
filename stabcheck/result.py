"""The finished audit as one object, and the stable JSON report made from it.

:func:`build_result` is the only way an :class:`AuditResult` is made, and it reads nothing
but a journal's contents, so a report re-rendered later from the results directory is the
same report.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from stabcheck import __version__
from stabcheck.diagnose import Diagnosis, diagnose
from stabcheck.diagnose.context import Context
from stabcheck.journal import JournalContents
from stabcheck.thresholds import Thresholds
from stabcheck.verdict import Verdict, decide

SCHEMA_VERSION = 1


@dataclass
class AuditResult:
    """Everything a renderer may show. Renderers only format it."""

    name: str
    config: dict[str, Any]
    config_path: str
    environment: dict[str, Any]
    diagnosis: Diagnosis
    verdict: Verdict
    planned: int
    fail_on: str
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The exit code the CLI returns."""
        return self.verdict.exit_code

    def to_json(self) -> dict[str, Any]:
        """The JSON report (documented in docs/json-report.md)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "stabcheck", "version": __version__},
            "name": self.name,
            "verdict": self.verdict.verdict,
            "exit_code": self.verdict.exit_code,
            "complete": self.verdict.complete,
            "reason": self.verdict.reason,
            "fail_on": self.fail_on,
            "config_path": self.config_path,
            "config": self.config,
            "environment": self.environment,
            "probes": [_probe_json(p) for p in self.diagnosis.probes],
            "findings": [f.to_dict() for f in self.diagnosis.findings],
            "summary": self.diagnosis.summary.to_json(),
            "notes": self.notes,
            "timings": self.timings,
        }


def _probe_json(p: Any) -> dict[str, Any]:
    r = p.record
    return {
        "index": r.index, "key": r.key, "lr": r.lr, "seed": r.seed, "batch_size": r.batch_size,
        "status": p.status, "outcome": r.outcome, "engine": r.engine,
        "steps_planned": r.steps_planned, "steps_run": r.steps_run,
        "first_nonfinite_step": r.first_nonfinite_step, "nonfinite_what": r.nonfinite_what,
        "nonfinite_kind": r.nonfinite_kind, "nonfinite_module": r.nonfinite_module,
        "stats": p.stats.to_json(), "findings": sorted({f.code for f in p.findings}),
        "error": r.error, "timings": {"wall_time_s": round(r.wall_time_s, 4)},
        "curvature": r.curvature,
    }


def environment(device: str) -> dict[str, Any]:
    """What the audit ran on (stable across runs on one machine, for determinism checks)."""
    import torch  # here, not at the top: ``stabcheck report`` needs no torch

    env: dict[str, Any] = {
        "stabcheck": __version__, "torch": torch.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(terse=True),
        "device": device, "cuda": torch.version.cuda,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def build_result(contents: JournalContents, interrupted: bool = False,
                 exit_zero: bool = False, fail_on: str | None = None,
                 thresholds: Thresholds | None = None,
                 timings: dict[str, float] | None = None) -> AuditResult:
    """Diagnose a journal's probes and decide the verdict."""
    header = contents.header
    config = header["config"]
    th = thresholds or Thresholds.model_validate(config.get("thresholds", {}))
    fail_on = fail_on or config.get("fail_on", "error")
    records = list(contents.probes.values())
    diagnosis = diagnose(records, Context(thresholds=th, config=config, init=contents.init))
    planned = int(header.get("planned", len(records)))
    verdict = decide(diagnosis.findings, [r.outcome for r in records], planned, fail_on,
                     th.min_finished_fraction, interrupted=interrupted, exit_zero=exit_zero)
    # An interruption that a later --resume made good is history, not part of the report:
    # an interrupted and resumed audit reports the same as an uninterrupted one.
    healed = len(records) >= planned
    # A resumed audit journals its engine note again: each note is reported once.
    notes = list(dict.fromkeys(e["message"] for e in contents.events if "message" in e
                               and not (healed and e.get("event") == "interrupted")))
    return AuditResult(
        name=config.get("name", "audit"), config=config,
        config_path=header.get("config_path", ""), environment=header.get("environment", {}),
        diagnosis=diagnosis, verdict=verdict, planned=planned, fail_on=fail_on, thresholds=th,
        notes=notes, timings=timings or {},
    )
