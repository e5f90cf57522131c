"""Engine agreement: every probe's status and every grid's exit code, one engine against the
sequential reference, both audited on this machine (``python -m calibration agree``).

The truth in ``labels.json`` was trained on another machine, and at chaotic learning rates the
plain loop itself moves between machines; two engines are compared with each other here, on
the same machine, so that what differs is the engine and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calibration.corpus import audit, loss_diffs, name


@dataclass
class Agreement:
    """One grid: the reference's and the other engine's statuses, probe by probe."""

    name: str
    exit_codes: tuple[int, int]
    engines: dict[str, int]
    differ: list[str] = field(default_factory=list)  # "lr= seed= bs=: reference vs other"
    probes: int = 0
    trace: float = 0.0  # largest relative loss difference between the two engines' traces


def _under(out: Path | None, engine: str) -> Path | None:
    return None if out is None else out / engine


def _point(record: Any) -> tuple[float, int, int]:
    """A probe's grid point (its key also hashes the config, which a recorded journal of an
    older config revision does not share)."""
    return (record.lr, record.seed, record.batch_size)


def compare(path: Path, engine: str = "auto", rerun: bool = False,
            out: Path | None = None) -> Agreement:
    """Audit ``path`` with the sequential engine and with ``engine`` (each once, into its own
    cache, or under ``out``; ``rerun`` audits both again) and compare them probe by probe."""
    ref = audit(path, rerun=rerun, engine="sequential", out=_under(out, "sequential"))
    other = audit(path, rerun=rerun, engine=engine, out=_under(out, engine))
    theirs = {_point(p.record): p for p in other.diagnosis.probes}
    row = Agreement(name(path), (ref.exit_code, other.exit_code), {})
    for p in ref.diagnosis.probes:
        q = theirs.get(_point(p.record))
        row.probes += 1
        if q is None or q.status != p.status:
            lr, seed, bs = _point(p.record)
            row.differ.append(f"lr={lr:g} seed={seed} bs={bs}: {p.status} vs "
                              f"{q.status if q else 'missing'}")
            continue
        row.engines[q.record.engine] = row.engines.get(q.record.engine, 0) + 1
        row.trace = max([row.trace, *loss_diffs(p.record.series("loss"),
                                                 q.record.series("loss"))])
    return row


def report(rows: list[Agreement], engine: str) -> str:
    """The table ``python -m calibration agree`` prints, with its totals line."""
    lines = [f"{'model':26s} {'probes':>6s} {'same':>5s} {'exit':>9s} {'trace':>8s}  "
             f"{engine} ran on"]
    for r in rows:
        ok = "ok" if r.exit_codes[0] == r.exit_codes[1] else "DIFFER"
        ran = ", ".join(f"{k} {v}" for k, v in sorted(r.engines.items()))
        lines.append(f"{r.name:26s} {r.probes:6d} {r.probes - len(r.differ):5d} "
                     f"{r.exit_codes[0]}/{r.exit_codes[1]} {ok:>6s} {r.trace:8.1e}  {ran}")
        lines.extend(f"    {d}" for d in r.differ)
    probes = sum(r.probes for r in rows)
    same = probes - sum(len(r.differ) for r in rows)
    gates = sum(r.exit_codes[0] == r.exit_codes[1] for r in rows)
    lines.append(f"same status {same}/{probes} probes; same exit code {gates}/{len(rows)} grids "
                 f"(sequential vs {engine}, both audited on this machine)")
    return "\n".join(lines)
