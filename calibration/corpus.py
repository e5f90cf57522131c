"""Run the calibration corpus: plain-loop truth against stabcheck's verdicts.

* Truth: :mod:`calibration.plain` trains every probe, :mod:`calibration.labels` labels it;
  the labels (and the loss curves) are cached in ``labels.json``, keyed by a digest of the
  config and of ``models.py``/``data.py``, so reruns do not retrain.
* stabcheck: each config is audited once (``.cache/<name>/``, a normal results directory);
  later runs re-diagnose the journal with the current detectors, which is what calibrating
  thresholds needs. ``--rerun`` audits again (after an engine change).
* engines: the reference is the sequential engine (its journals are the ones kept in
  ``records/``); ``engine="auto"`` or ``"vectorized"`` audits into ``.cache-<engine>/<name>/``
  and never reads or writes ``records/``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
HOLDOUT = HERE / "holdout"  # never used to set a threshold: checks the defaults generalise
LABELS = HERE / "labels.json"
CACHE = HERE / ".cache"
RECORDS = HERE / "records"
FAST = ("gru-rmsprop", "lstm-sgd-nesterov", "gru-adam-safe")
ENGINES = ("sequential", "vectorized", "auto")  # sequential: the reference (records/)


def config_paths(names: list[str] | None = None, fast: bool = False,
                 holdout: bool = False) -> list[Path]:
    """The corpus configs (all, the named ones, or the fast CI slice), or the hold-out set."""
    paths = sorted((HOLDOUT if holdout else CONFIGS).glob("*.yaml"))
    wanted = set(names or (FAST if fast else ()))
    if wanted:
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"unknown corpus model(s): {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(p.stem for p in paths)}")
        paths = [p for p in paths if p.stem in wanted]
    return paths


def name(path: Path) -> str:
    """A config's name in tables and caches (hold-out configs are prefixed)."""
    return f"holdout-{path.stem}" if path.parent.name == HOLDOUT.name else path.stem


def digest(path: Path) -> str:
    """What the plain-loop labels depend on: the config, the model and data code."""
    h = hashlib.sha256()
    for part in (path, HERE / "models.py", HERE / "data.py", HERE / "labels.py",
                 HERE / "plain.py"):
        h.update(part.read_bytes())
    return h.hexdigest()[:16]


def truth(path: Path, refresh: bool = False, labels: Path = LABELS) -> list[dict[str, Any]]:
    """Plain-loop probes of one config, labelled; cached in ``labels`` (``labels.json``)."""
    cache: dict[str, Any] = json.loads(labels.read_text()) if labels.exists() else {}
    key = digest(path)
    entry = cache.get(name(path))
    if entry and entry.get("digest") == key and not refresh:
        return list(entry["probes"])
    probes = labelled(path)
    cache[name(path)] = {"digest": key, "probes": probes}
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text(json.dumps(cache, indent=None, sort_keys=True) + "\n")
    return probes


def labelled(path: Path) -> list[dict[str, Any]]:
    """Train one config's probes with the plain loop and label them (no cache)."""
    from calibration import plain
    from calibration.labels import label

    probes = plain.run(path)
    for p in probes:
        p["label"], measures = label(p["losses"])
        p.update({k: None if v is None or not math.isfinite(v) else float(f"{v:.6g}")
                  for k, v in measures.items()})
        p["losses"] = [None if v is None else float(f"{v:.6g}") for v in p["losses"]]
    return probes


def cache_dir(path: Path, engine: str = "sequential") -> Path:
    """Where one config's audit with ``engine`` is kept (a normal results directory)."""
    if engine not in ENGINES:
        raise SystemExit(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    return (CACHE if engine == "sequential" else HERE / f".cache-{engine}") / name(path)


def audit(path: Path, rerun: bool = False, thresholds: dict[str, Any] | None = None,
          out: Path | None = None, engine: str = "sequential") -> Any:
    """stabcheck's result for one config: audited once, re-diagnosed from the journal.
    The recorded journals (``records/``) are the sequential engine's: another engine is
    audited into its own cache the first time it is asked for."""
    from stabcheck.audit import AuditOptions, run_audit
    from stabcheck.config import load_config
    from stabcheck.journal import JOURNAL_NAME, JournalContents, read_journal
    from stabcheck.result import build_result

    out = out or cache_dir(path, engine)
    recorded = RECORDS / f"{name(path)}.jsonl.gz"
    journal = out / JOURNAL_NAME
    if (not journal.exists() and recorded.exists() and not rerun
            and engine == "sequential"):
        with tempfile.TemporaryDirectory() as tmp:  # the recorded journal, read in place
            (Path(tmp) / JOURNAL_NAME).write_bytes(gzip.decompress(recorded.read_bytes()))
            contents: JournalContents = read_journal(Path(tmp))
    else:
        if rerun or not journal.exists():
            # Sequential by default: the reference whose trajectory the plain loop
            # reproduces step for step (README "Same trajectory").
            run_audit(load_config(path), AuditOptions(out_dir=out, overwrite=True,
                                                     executor="local", engine=engine))
        contents = read_journal(out)
    if not thresholds:
        return build_result(contents)
    from stabcheck.thresholds import Thresholds

    configured = dict(contents.header["config"].get("thresholds") or {})
    return build_result(contents, thresholds=Thresholds.model_validate(
        {**configured, **thresholds}))


def record(path: Path, engine: str = "sequential") -> Path:
    """Keep one config's journal, gzipped, under ``records/`` (the recorded real traces).
    Only the sequential engine's: the records are the reference trajectories."""
    if engine != "sequential":
        raise SystemExit(f"--record keeps the sequential engine's journals only "
                         f"(calibration/records/ is the reference), not --engine {engine}")
    RECORDS.mkdir(exist_ok=True)
    target = RECORDS / f"{name(path)}.jsonl.gz"
    target.write_bytes(gzip.compress((CACHE / name(path) / "probes.jsonl").read_bytes(),
                                     mtime=0))
    return target


@dataclass
class ModelScore:
    """One model's confusion counts against the truth."""

    name: str
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    expected_exit: int = 0
    exit_code: int = 0
    trace_diff: float = 0.0
    misses: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    stable_truth: dict[int, float | None] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    plain_s: float = 0.0
    audit_s: float = 0.0
    engines: dict[str, int] = field(default_factory=dict)  # probes per engine that ran them
    fallbacks: dict[str, int] = field(default_factory=dict)  # why not vectorized: probes
    engine_trace: dict[str, float] = field(default_factory=dict)  # trace_diff per engine

    def n(self, truth: str, status: str | None = None) -> int:
        return sum(v for (t, s), v in self.counts.items()
                   if t == truth and (status is None or s == status))


def score(path: Path, refresh: bool = False, rerun: bool = False,
          thresholds: dict[str, Any] | None = None, live: Path | None = None,
          engine: str = "sequential", labels: Path = LABELS) -> ModelScore:
    """Compare one config's stabcheck verdicts with its plain-loop labels. ``live``: train
    both from scratch, with stabcheck's results under that directory, and no cache.
    ``labels``: another truth cache (the plain loop trained on this machine, say)."""
    plain_s = audit_s = 0.0
    if live is not None:
        started = time.perf_counter()
        probes = labelled(path)
        plain_s = time.perf_counter() - started
        result = audit(path, rerun=True, out=live, engine=engine)
        audit_s = time.perf_counter() - started - plain_s
    else:
        probes, result = truth(path, refresh, labels), audit(path, rerun, thresholds, engine=engine)
    by_point = {(p.record.batch_size, p.record.lr, p.record.seed): p
                for p in result.diagnosis.probes}
    s = ModelScore(name(path), plain_s=plain_s, audit_s=audit_s)
    diffs = []
    for t in probes:
        p = by_point[(t["batch_size"], t["lr"], t["seed"])]
        key = (t["label"], p.status)
        s.counts[key] = s.counts.get(key, 0) + 1
        where = f"lr={t['lr']:g} seed={t['seed']} bs={t['batch_size']}"
        codes = ",".join(sorted({f.code for f in p.findings if f.severity.rank >= 1}))
        if t["label"] == "diverged" and p.status not in ("diverged", "unstable"):
            s.misses.append(f"{where} ({p.status})")
        if t["label"] == "healthy" and p.status != "healthy":
            s.alarms.append(f"{where} ({p.status}: {codes})")
        s.engines[p.record.engine] = s.engines.get(p.record.engine, 0) + 1
        for note in p.record.notes:
            if "sequential engine" in note:  # a fallback, a failure, a runaway re-run, a replay
                why = note[:110]
                s.fallbacks[why] = s.fallbacks.get(why, 0) + 1
        mine_diffs = loss_diffs(t["losses"], p.record.series("loss"))
        diffs += mine_diffs
        s.engine_trace[p.record.engine] = max([s.engine_trace.get(p.record.engine, 0.0),
                                               *mine_diffs])
    s.trace_diff = max(diffs) if diffs else 0.0
    s.expected_exit = 1 if any(t["label"] == "diverged" for t in probes) else 0
    s.exit_code = result.exit_code
    for bs in sorted({t["batch_size"] for t in probes}):
        ok = [lr for lr in sorted({t["lr"] for t in probes if t["batch_size"] == bs})
              if all(t["label"] == "healthy" for t in probes
                     if t["batch_size"] == bs and t["lr"] == lr)]
        s.stable_truth[bs] = max(ok) if ok else None
    summary = result.diagnosis.summary.to_json()
    s.reported = {k: summary.get(k) for k in ("max_stable_lr", "min_diverging_lr")}
    return s


def loss_diffs(reference: Any, losses: Any) -> list[float]:
    """Step by step, the relative difference of ``losses`` from ``reference`` (``None`` or
    NaN where a step was not finite; such steps are left out): the ``trace`` column."""
    return [abs(a - b) / max(abs(a), 1e-3) for a, b in zip(reference, losses, strict=False)
            if a is not None and math.isfinite(a) and math.isfinite(b) and abs(a) > 0]


def table(scores: list[ModelScore]) -> str:
    """The confusion table, per model and in total."""
    head = (f"{'model':<22} {'div':>4} {'flag':>5} {'asdiv':>5} {'hlth':>5} {'kept':>5} "
            f"{'bord':>4} {'gate':>7} {'trace':>8}")
    lines = [head, "-" * len(head)]
    tot = {"d": 0, "f": 0, "a": 0, "h": 0, "k": 0, "b": 0, "g": 0}
    for s in scores:
        d = s.n("diverged")
        f = s.n("diverged", "diverged") + s.n("diverged", "unstable")
        a = s.n("diverged", "diverged")
        h = s.n("healthy")
        k = s.n("healthy", "healthy")
        b = s.n("borderline")
        gate = s.exit_code == s.expected_exit
        for key, v in zip("dfahkbg", (d, f, a, h, k, b, int(gate)), strict=True):
            tot[key] += v
        lines.append(f"{s.name:<22} {d:>4} {f:>5} {a:>5} {h:>5} {k:>5} {b:>4} "
                     f"{s.exit_code}/{s.expected_exit}{' ok' if gate else ' !!':<3} "
                     f"{s.trace_diff:>8.1e}")
    lines.append("-" * len(head))
    lines.append(f"{'TOTAL':<22} {tot['d']:>4} {tot['f']:>5} {tot['a']:>5} {tot['h']:>5} "
                 f"{tot['k']:>5} {tot['b']:>4} {tot['g']:>3}/{len(scores):<3}")
    fa = tot["h"] - tot["k"]
    lines.append(f"diverged flagged {tot['f']}/{tot['d']}; healthy called something else "
                 f"{fa}/{tot['h']} ({fa / max(tot['h'], 1):.0%}); gate right "
                 f"{tot['g']}/{len(scores)} models")
    return "\n".join(lines)


def engines(scores: list[ModelScore]) -> str:
    """Which engine ran each model's probes, and why a probe was not vectorized."""
    out = []
    for s in scores:
        ran = ", ".join(f"{k} {v} (trace {s.engine_trace.get(k, 0.0):.1e})"
                        for k, v in sorted(s.engines.items()))
        out.append(f"{s.name}: {ran}")
        out += [f"  {n} x {why}" for why, n in sorted(s.fallbacks.items())]
    return "\n".join(out)


def details(scores: list[ModelScore]) -> str:
    """Misses, false alarms and max stable LRs, per model."""
    out = []
    for s in scores:
        out.append(f"{s.name}: truth max-clean LR {s.stable_truth}; stabcheck {s.reported}")
        out += [f"  MISS  {m}" for m in s.misses]
        out += [f"  ALARM {a}" for a in s.alarms]
    return "\n".join(out)


# One threshold at a time moved back to its old value or to a neighbour: the evidence that
# each default is where the corpus puts it (README "Thresholds and their evidence").
ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("divergence_factor=4 (fastai)", {"divergence_factor": 4.0}),
    ("divergence_factor=2", {"divergence_factor": 2.0}),
    ("divergence_noise_sigma=0", {"divergence_noise_sigma": 0.0}),
    ("divergence_noise_sigma=4", {"divergence_noise_sigma": 4.0}),
    ("blowup_factor=3", {"blowup_factor": 3.0}),
    ("blowup_factor=off", {"blowup_factor": 1e30}),
    ("progress_fraction=0.05", {"progress_fraction": 0.05}),
    ("progress_fraction=0.2", {"progress_fraction": 0.2}),
    ("spike_noise_steps=0 (old)", {"spike_noise_steps": 0}),
    ("spike_noise_steps=2", {"spike_noise_steps": 2}),
    ("grad_spike_fraction=0.05", {"grad_spike_fraction": 0.05}),
    ("grad_spike_fraction=1 (never)", {"grad_spike_fraction": 1.0}),
    ("grad_spike_fraction~0 (all warn)", {"grad_spike_fraction": 1e-9}),
    ("adaptive_early_steps=0", {"adaptive_early_steps": 0}),
    ("grad_spike_response_steps=0", {"grad_spike_response_steps": 0}),
]


def totals(scores: list[ModelScore]) -> tuple[int, int, int, int, int, int]:
    """(diverged flagged, diverged, healthy kept, healthy, gate right, models)."""
    d = sum(s.n("diverged") for s in scores)
    f = sum(s.n("diverged", "diverged") + s.n("diverged", "unstable") for s in scores)
    h = sum(s.n("healthy") for s in scores)
    k = sum(s.n("healthy", "healthy") for s in scores)
    g = sum(s.exit_code == s.expected_exit for s in scores)
    return f, d, k, h, g, len(scores)


def ablate(paths: list[Path]) -> str:
    """The corpus totals under each of :data:`ABLATIONS`."""
    lines = [f"{'thresholds':<32} {'diverged flagged':>16} {'as diverged':>11} "
             f"{'false alarms':>13} {'gate right':>10}"]
    for label, change in ABLATIONS:
        scores = [score(p, thresholds=change) for p in paths]
        f, d, k, h, g, m = totals(scores)
        a = sum(s.n("diverged", "diverged") for s in scores)
        lines.append(f"{label:<32} {f:>10}/{d:<5} {a:>7}/{d:<3} {h - k:>7}/{h:<5} "
                     f"{g:>6}/{m}")
    return "\n".join(lines)
