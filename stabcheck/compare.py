"""``stabcheck compare BASELINE NEW``: the regression gate for pull requests.

Compares two JSON reports (or results directories) of the same sweep and fails when the
new one is worse beyond a tolerance:

* the max stable LR of a batch size dropped (or disappeared);
* a new error-level finding appeared (matched by code and the grid cells it names);
* a cell that was healthy on every seed now fails (diverged, error, timeout or OOM);
* LR sensitivity (the normalised Wortsman et al. figure) rose by more than the tolerance.

Improvements and other changes are printed too, but never fail the gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabcheck.errors import ConfigError
from stabcheck.records import CRASHED

FAILED_STATUSES = ("diverged", *CRASHED)


@dataclass(frozen=True)
class Tolerances:
    """How much worse the new report may be before the gate fails."""

    lr_drop: float = 0.0  # relative drop of the max stable LR that is tolerated
    lr_sensitivity: float = 0.05  # absolute rise of the normalised LR sensitivity


@dataclass
class Comparison:
    """What changed, split into what fails the gate and what does not."""

    regressions: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 when anything regressed, else 0."""
        return 1 if self.regressions else 0

    def render(self) -> str:
        """The human summary."""
        lines: list[str] = []
        for title, items, mark in (("Regressions", self.regressions, "✗"),
                                   ("Improvements", self.improvements, "✓"),
                                   ("Other changes", self.notes, "·")):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {mark} {item}" for item in items]
        if not lines:
            lines.append("No change in max stable LR, error findings, cell health or LR "
                         "sensitivity.")
        verdict = "REGRESSED" if self.regressions else "OK"
        lines.append(f"compare: {verdict} ({len(self.regressions)} regression(s), exit "
                     f"{self.exit_code})")
        return "\n".join(lines) + "\n"


def load_report(path: Path) -> dict[str, Any]:
    """A JSON report from ``report.json`` or a results directory (built from its journal
    when the directory has no ``report.json`` yet, e.g. after a kill)."""
    if path.is_dir():
        report = path / "report.json"
        if not report.is_file():
            from stabcheck.journal import read_journal
            from stabcheck.result import build_result

            return build_result(read_journal(path)).to_json()
        path = report
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such report or results directory") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a stabcheck JSON report (not UTF-8)") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a stabcheck JSON report (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ConfigError(f"{path}: not a stabcheck JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("schema_version") != 1 or "summary" not in data:
        raise ConfigError(f"{path}: not a stabcheck JSON report with schema_version 1")
    problem = _shape_problem(data)
    if problem:
        raise ConfigError(f"{path}: malformed stabcheck JSON report: {problem}")
    return data


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _shape_problem(data: dict[str, Any]) -> str | None:
    """What in a report's shape ``compare`` cannot use, or ``None``."""
    summary = data["summary"]
    if not isinstance(summary, dict):
        return "summary is not a mapping"
    for name in ("max_stable_lr", "lr_sensitivity"):
        value = summary.get(name) or {}
        if not isinstance(value, dict):
            return f"summary.{name} is not a mapping"
        for bs, item in value.items():
            if not bs.isdigit():
                return f"summary.{name} has a key {bs[:40]!r} that is not a batch size"
            inner = item.get("normalised") if isinstance(item, dict) else item
            if (name == "lr_sensitivity" and not isinstance(item, dict)) or \
                    not _number_or_none(inner):
                return f"summary.{name}[{bs}] is not a number"
    probes, findings = data.get("probes", []), data.get("findings", [])
    if not isinstance(probes, list) or not isinstance(findings, list):
        return "probes and findings must be lists"
    for i, p in enumerate(probes):
        if not (isinstance(p, dict) and isinstance(p.get("batch_size"), int)
                and _number_or_none(p.get("lr")) and p.get("lr") is not None
                and isinstance(p.get("status"), str)
                and isinstance(p.get("index", 0), int)):
            return f"probes[{i}] lacks a batch_size, lr, status or index of the right type"
    for i, f in enumerate(findings):
        if not (isinstance(f, dict) and isinstance(f.get("code"), str)
                and isinstance(f.get("probes", []), list)
                and all(isinstance(i, int) for i in f.get("probes", []))):
            return f"findings[{i}] lacks a code or its probes list"
    for name in ("config", "complete"):
        if name in data and not isinstance(data[name], dict | bool):
            return f"{name} has the wrong type"
    return None


def incomplete_reason(report: dict[str, Any]) -> str | None:
    """Why a report cannot stand for its sweep (an interrupted, killed, not-carried-out or
    empty audit), or ``None`` when it is complete."""
    probes = report.get("probes", [])
    if not probes:
        return "it has no probe"
    if report.get("complete") is False or report.get("verdict") in ("incomplete",
                                                                      "not_carried_out"):
        return (f"its audit was {report.get('verdict', 'incomplete')}: "
                f"{report.get('reason', 'not every probe ran')}")
    return None


def _cells(report: dict[str, Any]) -> dict[tuple[int, float], list[str]]:
    out: dict[tuple[int, float], list[str]] = {}
    for p in report.get("probes", []):
        out.setdefault((int(p["batch_size"]), float(p["lr"])), []).append(p["status"])
    return out


def _error_keys(report: dict[str, Any]) -> dict[tuple[str, tuple[tuple[int, float], ...]], str]:
    by_index = {p["index"]: (int(p["batch_size"]), float(p["lr"]))
                for p in report.get("probes", [])}
    out = {}
    for f in report.get("findings", []):
        if f.get("severity") == "error":
            cells = tuple(sorted({by_index[i] for i in f.get("probes", []) if i in by_index}))
            out[(f["code"], cells)] = f"{f['code']} {f.get('message', '')}"
    return out


def _cell_name(cell: tuple[int, float]) -> str:
    return f"lr={cell[1]:g} bs={cell[0]}"


def compare(base: dict[str, Any], new: dict[str, Any], tol: Tolerances | None = None
            ) -> Comparison:
    """Compare two JSON reports."""
    tol = tol or Tolerances()
    out = Comparison()
    why = incomplete_reason(base)
    if why:
        raise ConfigError(f"BASELINE cannot be compared against: {why}")
    why = incomplete_reason(new)
    if why:  # an incomplete NEW proves nothing: it fails the gate
        out.regressions.append(f"NEW is not a complete audit: {why}")
    missing = sorted({p["batch_size"] for p in base["probes"]}
                     - {p["batch_size"] for p in new.get("probes", [])})
    for bs in missing:
        out.regressions.append(f"bs={bs} was audited in BASELINE but not in NEW")
    if base.get("config", {}).get("sweep") != new.get("config", {}).get("sweep"):
        out.notes.append("the sweeps differ; only the cells and batch sizes in both are "
                         "compared")
    b_msl, n_msl = base["summary"].get("max_stable_lr", {}), new["summary"].get(
        "max_stable_lr", {})
    for bs in sorted(set(b_msl) & set(n_msl), key=int):
        old, now = b_msl[bs], n_msl[bs]
        if old is not None and (now is None or now < old * (1 - tol.lr_drop) * (1 - 1e-9)):
            out.regressions.append(f"max stable LR at bs={bs} dropped: {old:g} → "
                                   f"{'none' if now is None else f'{now:g}'}")
        elif now is not None and (old is None or now > old):
            out.improvements.append(f"max stable LR at bs={bs} rose: "
                                    f"{'none' if old is None else f'{old:g}'} → {now:g}")
    b_err, n_err = _error_keys(base), _error_keys(new)
    for key in sorted(set(n_err) - set(b_err)):
        out.regressions.append(f"new error finding: {n_err[key]}")
    for key in sorted(set(b_err) - set(n_err)):
        out.improvements.append(f"error finding gone: {b_err[key]}")
    b_cells, n_cells = _cells(base), _cells(new)
    for cell in sorted(set(b_cells) & set(n_cells)):
        was, now = b_cells[cell], n_cells[cell]
        if all(s == "healthy" for s in was) and any(s in FAILED_STATUSES for s in now):
            out.regressions.append(f"cell {_cell_name(cell)} was healthy and now fails "
                                   f"({', '.join(sorted(set(now)))})")
        elif all(s == "healthy" for s in was) and any(s != "healthy" for s in now):
            out.notes.append(f"cell {_cell_name(cell)} was healthy and is now "
                             f"{', '.join(sorted(set(now)))}")
        elif any(s in FAILED_STATUSES for s in was) and all(s == "healthy" for s in now):
            out.improvements.append(f"cell {_cell_name(cell)} now healthy")
    b_sens = base["summary"].get("lr_sensitivity") or {}
    n_sens = new["summary"].get("lr_sensitivity") or {}
    for bs in sorted(set(b_sens) & set(n_sens), key=int):
        old, now = b_sens[bs].get("normalised"), n_sens[bs].get("normalised")
        if old is None or now is None or not (math.isfinite(old) and math.isfinite(now)):
            continue
        if now - old > tol.lr_sensitivity:
            out.regressions.append(f"LR sensitivity at bs={bs} worsened: {old:.3f} → "
                                   f"{now:.3f} (tolerance +{tol.lr_sensitivity:g})")
        elif old - now > tol.lr_sensitivity:
            out.improvements.append(f"LR sensitivity at bs={bs} improved: {old:.3f} → "
                                    f"{now:.3f}")
    return out
