"""Plain loop vs the whole audit, on the built-in grids and on real models of the corpus.

    python -m benchmarks.bench_real                 # full run (about an hour on 2 CPU cores)
    python -m benchmarks.bench_real --quick         # smoke run: tiny grids, one round
    python -m benchmarks.bench_real --only gpt2,lstm --rounds 5 --whole-only
    python -m benchmarks.bench_real --corpus-grid   # the corpus configs as they are

Two modes, each run over the same grids, the variants interleaved round by round (the order
of the two sides alternates), each figure the median of ``--rounds`` rounds:

* **whole process** — what the user waits for: a subprocess running the plain PyTorch script
  ``benchmarks/plain_loop.py`` (imports torch, and transformers when the model needs it;
  builds the model per grid point with stabcheck's seed protocol; torch.optim, loss,
  backward, step; no stabcheck import) against a subprocess ``stabcheck audit CONFIG --out
  DIR -v --exit-zero`` (the real CLI, default engine and executor). ``plain/audit`` > 1 means
  the audit of the whole grid finished sooner than the user's own loop. The audit's own phase
  breakdown (its ``-v`` ``timings:`` line and report.json's ``wall_time_s``) is printed too,
  the rest being interpreter start and imports.
* **engine-only** — inside this process, training only: the same plain loop over the
  problem stabcheck built (its model factory, loss and data; torch.optim) against the engine
  the audit selects (``select_engine(..., "auto", ...)``, chosen once, untimed) running every
  cohort. Building the problem, the init checks, the report and imports are excluded, which
  separates the fixed costs from training speed.

Grids: the built-in quickstart-like MLP (20-64-64-4, SGD momentum, 4 lr x 3 seeds x bs
{32, 128} = 24 probes x 500 steps) and the same at width 256; six real models of the
calibration corpus (GPT-2, Llama, BERT, ViT, ResNet with BatchNorm, LSTM) with their config's
model, data and optimizer on a user-audit-sized grid: the config's learning rates less the
largest (4), seeds {0, 1, 2}, bs {16, 64} = 24 probes x 200 steps. ``--corpus-grid`` runs the
corpus configs as they are (10 probes x 60 steps: the fixed-cost-dominated case). The configs
are written to a temporary directory. The benchmark prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.bench_engines import _mlp_grid

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "calibration" / "configs"
PLAIN_SCRIPT = ROOT / "benchmarks" / "plain_loop.py"
# The real models of the benchmark: short name -> corpus config.
REAL = {"gpt2": "gpt2-adam", "llama": "llama-adamw-warmup", "bert": "bert-sgd-momentum",
        "vit": "vit-adamw-warmup", "resnet": "resnet-sgd-momentum",
        "lstm": "lstm-sgd-nesterov"}
QUICK = ("quickstart", "lstm", "gpt2")  # the variants of --quick unless --only says otherwise
PHASES = ("building", "init checks", "curvature at init", "training", "report")


@dataclass
class Variant:
    """One benchmark grid: a stabcheck config (as a dict) and its plain/audit target."""

    name: str
    config: dict[str, Any]
    target: float
    path: Path = field(default=Path())

    @property
    def n_probes(self) -> int:
        sweep = self.config["sweep"]
        return len(sweep["learning_rates"]) * len(sweep["seeds"]) * len(sweep["batch_sizes"])

    @property
    def steps(self) -> int:
        return int(self.config["probe"]["steps"])


def _mlp(name: str, width: int, quick: bool, target: float) -> Variant:
    """The quickstart-like MLP grid of ``bench_engines`` (one definition for both benchmarks)."""
    if quick:
        grid = _mlp_grid(name, width, 20, [0.001, 0.01], [0], [32], "cpu")
    else:
        grid = _mlp_grid(name, width, 500, [0.001, 0.003, 0.01, 0.03], [0, 1, 2], [32, 128],
                         "cpu")
    return Variant(name, {**grid.config, "fail_on": "error"}, target)


def _real(short: str, quick: bool, corpus_grid: bool) -> Variant:
    source = CORPUS / f"{REAL[short]}.yaml"
    cfg = dict(yaml.safe_load(source.read_text(encoding="utf-8")))
    for section in ("model", "data"):  # the temp config lives elsewhere: absolute factories
        file, attr = cfg[section]["factory"].rsplit(":", 1)
        cfg[section]["factory"] = f"{(source.parent / file).resolve()}:{attr}"
    lrs = sorted(float(v) for v in cfg["sweep"]["learning_rates"])
    if quick:
        cfg["sweep"] = {"learning_rates": lrs[:2], "seeds": [0], "batch_sizes": [16]}
        cfg["probe"]["steps"] = 10
    elif not corpus_grid:
        cfg["sweep"] = {"learning_rates": lrs[:4], "seeds": [0, 1, 2], "batch_sizes": [16, 64]}
        cfg["probe"]["steps"] = 200
    cfg["name"] = f"bench-{short}"
    label = f"{short} ({REAL[short]})"
    return Variant(label, cfg, 1.5)


def variants(quick: bool, corpus_grid: bool, only: list[str] | None) -> list[Variant]:
    """The grids of the issue, narrowed by ``--only`` (or to :data:`QUICK` with ``--quick``)."""
    out = [_mlp("quickstart mlp w64", 64, quick, 2.0), _mlp("mlp w256", 256, quick, 1.2)]
    out += [_real(short, quick, corpus_grid) for short in REAL]
    wanted = only if only is not None else (list(QUICK) if quick else None)
    if wanted is not None:
        out = [v for v in out if any(w in v.name for w in wanted)]
    return out


def write_configs(items: list[Variant], workdir: Path) -> None:
    for i, v in enumerate(items):
        v.path = workdir / f"grid{i}.yaml"
        v.path.write_text(yaml.safe_dump(v.config, sort_keys=False), encoding="utf-8")


def _progress(r: int, rounds: int, name: str, res: dict[str, Any], label: str) -> None:
    done = res.get("error") or f"plain {res['plain'][-1]:.2f}s {label} {res['audit'][-1]:.2f}s"
    print(f"  round {r + 1}/{rounds} {name}: {done}", file=sys.stderr, flush=True)


# -- whole process -------------------------------------------------------------------------


def _env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                        if env.get("PYTHONPATH") else []))
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{Path(cmd[1]).name if cmd[1] != '-m' else 'stabcheck audit'} "
                           f"exited {proc.returncode}: {' | '.join(tail)}")
    return elapsed, proc


def parse_audit(stderr: str, out_dir: Path) -> dict[str, Any]:
    """The audit's phase times (``-v``'s ``timings:`` line), wall time and engine."""
    info: dict[str, Any] = {"phases": {}}
    for line in stderr.splitlines():
        if line.startswith("timings:"):
            for part in line[len("timings:"):].split("·"):
                m = re.match(r"\s*(.+?)\s+([0-9.]+)s\s*$", part)
                if m:
                    info["phases"][m.group(1)] = float(m.group(2))
        m = re.search(r"engine (\S+), executor (\S+)", line)
        if m and line.lstrip("- ").startswith("training"):
            info["engine"] = m.group(1)
            info["executor"] = m.group(2)
        if "sequential engine used:" in line:
            info["reason"] = line.split("sequential engine used:", 1)[1].strip()
    report = out_dir / "report.json"
    if report.exists():
        doc = json.loads(report.read_text(encoding="utf-8"))
        if "wall_time_s" in (doc.get("timings") or {}):
            info["wall"] = float(doc["timings"]["wall_time_s"])
        notes = [n for n in doc.get("notes") or []
                 if isinstance(n, str) and "sequential engine used:" in n]
        if notes:  # unwrapped, unlike the terminal's line
            info["reason"] = notes[0].split("sequential engine used:", 1)[1].strip()
    return info


def whole_process(items: list[Variant], rounds: int, threads: int | None, workdir: Path,
                  results: dict[str, dict[str, Any]]) -> None:
    """Fill ``results`` round by round (so that an interrupted run still has a table)."""
    env = _env(threads)
    results.update({v.name: {"plain": [], "audit": [], "info": []} for v in items})
    for r in range(rounds):
        for v in items:
            res = results[v.name]
            if "error" in res:
                continue
            out_dir = workdir / f"out-{v.path.stem}"
            sides: dict[str, list[str]] = {
                "plain": [sys.executable, str(PLAIN_SCRIPT), str(v.path)],
                "audit": [sys.executable, "-m", "stabcheck", "audit", str(v.path), "--out",
                          str(out_dir), "--overwrite", "-v", "--exit-zero"]}
            order = ["plain", "audit"] if r % 2 == 0 else ["audit", "plain"]
            try:
                for side in order:
                    elapsed, proc = _run(sides[side], env)
                    res[side].append(elapsed)
                    if side == "audit":
                        res["info"].append(parse_audit(proc.stderr, out_dir))
            except RuntimeError as exc:
                res["error"] = str(exc)
            _progress(r, rounds, v.name, res, "audit")


# -- engine only ---------------------------------------------------------------------------


def _plain_training(problem: Any, config: Any) -> Callable[[], None]:
    """The user's loop over stabcheck's problem: seed, build, torch.optim, train."""
    import math
    import random

    import numpy as np

    from stabcheck.plan import plan_probes

    probes = plan_probes(config)
    data = problem.data.to(problem.device)
    steps, warmup = config.probe.steps, config.probe.warmup_steps or 0

    def run() -> None:
        for spec in probes:
            random.seed(spec.seed)
            np.random.seed(spec.seed % 2**32)
            torch.manual_seed(spec.seed)
            model = problem.build_model().to(problem.device)
            model.train()
            opt = problem.make_optimizer([p for p in model.parameters() if p.requires_grad],
                                         spec.lr)
            g = torch.Generator().manual_seed(spec.seed)
            per_epoch = data.n // spec.batch_size
            order = torch.cat([torch.randperm(data.n, generator=g)[: per_epoch * spec.batch_size]
                               for _ in range(-(-steps // per_epoch))]).view(-1, spec.batch_size)
            for t in range(steps):
                if warmup:
                    for group in opt.param_groups:
                        group["lr"] = spec.lr * min(1.0, (t + 1) / warmup)
                loss = problem.loss_fn(model, data.batch(order[t].to(problem.device)))
                if not math.isfinite(float(loss.detach())):
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return run


def _engine_training(problem: Any, config: Any) -> tuple[Callable[[], None], str]:
    """The engine the audit would select, over every cohort (selection untimed)."""
    from stabcheck.engine import EngineSettings, Events
    from stabcheck.engine.vectorized import select_engine
    from stabcheck.plan import make_cohorts, plan_probes

    settings = EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    keys = {p.index: str(p.index) for p in probes}
    data = problem.data.to(problem.device)
    engine, note = select_engine(problem, "auto", settings, data, probes)
    label = getattr(engine, "name", type(engine).__name__) + (f" ({note})" if note else "")

    def run() -> None:
        records: list[Any] = []
        for cohort in make_cohorts(probes):
            engine.run_cohort(problem, cohort, settings, keys, data, Events(records.append))
        if len(records) != len(probes):
            raise RuntimeError(f"the engine returned {len(records)} of {len(probes)} records")
    return run, label


def engine_only(items: list[Variant], rounds: int, results: dict[str, dict[str, Any]]) -> None:
    from stabcheck import nodynamo
    from stabcheck.config import load_config
    from stabcheck.problem import build_problem

    nodynamo.install()  # as the audit does (no torch._dynamo import from torch.optim)
    runs: dict[str, dict[str, Callable[[], None]]] = {}
    for v in items:
        res: dict[str, Any] = {"plain": [], "audit": []}
        results[v.name] = res
        try:
            loaded = load_config(v.path)
            problem = build_problem(loaded)
            engine_run, res["engine"] = _engine_training(problem, loaded.config)
            runs[v.name] = {"plain": _plain_training(problem, loaded.config), "audit": engine_run}
        except Exception as exc:  # report it in the table; other variants still run
            res["error"] = f"{type(exc).__name__}: {exc}"
    for r in range(rounds):
        for v in items:
            res = results[v.name]
            if "error" in res:
                continue
            order = ["plain", "audit"] if r % 2 == 0 else ["audit", "plain"]
            try:
                for side in order:
                    start = time.perf_counter()
                    runs[v.name][side]()
                    res[side].append(time.perf_counter() - start)
            except Exception as exc:
                res["error"] = f"{type(exc).__name__}: {exc}"
            _progress(r, rounds, v.name, res, "engine")


# -- output --------------------------------------------------------------------------------


def load_line() -> str:
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"load averages?:\s*(.+)$", out.strip())
        return "load average " + (m.group(1) if m else
                                  ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    except OSError:
        return "load average unknown"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                "stabcheck"], capture_output=True, text=True, check=False)
        return out.stdout.strip() + (" (stabcheck/ modified)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(title: str, items: list[Variant], results: dict[str, dict[str, Any]],
          audit_label: str) -> list[str]:
    lines = [title, f"{'variant':<34} {'probes':>6} {'steps':>5} {'plain':>8} {audit_label:>8} "
             f"{'plain/audit':>11} {'rounds':>11} {'target':>7} {'met':>7}  engine"]
    for v in items:
        res = results[v.name]
        plain, audit = _median(res["plain"]), _median(res["audit"])
        head = f"{v.name:<34} {v.n_probes:>6} {v.steps:>5}"
        if plain is None or audit is None or "error" in res:
            lines.append(f"{head} error: {res.get('error', 'no measurement')}")
            continue
        ratio = plain / audit
        engine = res.get("engine") or _engine_of(res)
        per_round = [p / a for p, a in zip(res["plain"], res["audit"], strict=False)]
        spread = f"{min(per_round):.2f}-{max(per_round):.2f}"
        lines.append(f"{head} {plain:>7.2f}s {audit:>7.2f}s {ratio:>10.2f}x {spread:>11} "
                     f"{v.target:>6.1f}x {'met' if ratio >= v.target else 'NOT met':>7}  {engine}")
    return lines


def _engine_of(res: dict[str, Any]) -> str:
    info = (res.get("info") or [{}])[-1]
    return (info.get("engine", "?") + (f"/{info['executor']}" if info.get("executor") else "")
            + (f" ({info['reason']})" if info.get("reason") else ""))


def phase_table(items: list[Variant], results: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["audit phases (medians; 'process' = subprocess wall - report.json wall_time_s: "
             "interpreter start, imports, CLI, rendering the report)",
             f"{'variant':<34} " + " ".join(f"{p:>17}" for p in PHASES)
             + f" {'audit wall':>10} {'process':>8} {'whole':>8}"]
    for v in items:
        res = results[v.name]
        infos = res.get("info") or []
        if not infos or "error" in res:
            continue
        cells = []
        for p in PHASES:
            m = _median([i["phases"][p] for i in infos if p in i["phases"]])
            cells.append(f"{m:>16.2f}s" if m is not None else f"{'-':>17}")
        wall = _median([i["wall"] for i in infos if "wall" in i])
        whole = _median(res["audit"])
        assert whole is not None
        rest = _median([a - i["wall"] for a, i in zip(res["audit"], infos, strict=False)
                        if "wall" in i])
        lines.append(f"{v.name:<34} " + " ".join(cells)
                     + (f" {wall:>9.2f}s {rest:>7.2f}s" if wall is not None and rest is not None
                        else f" {'-':>10} {'-':>8}") + f" {whole:>7.2f}s")
    return lines


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny grids, 1 round, quickstart + lstm + gpt2")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument("--only", default=None,
                        help="comma-separated substrings of the variants to run "
                             "(quickstart, w256, gpt2, llama, bert, vit, resnet, lstm)")
    parser.add_argument("--engine-only", action="store_true", help="only the engine-only mode")
    parser.add_argument("--whole-only", action="store_true", help="only the whole-process mode")
    parser.add_argument("--corpus-grid", action="store_true",
                        help="real models on their corpus config's own grid (10 probes x 60 "
                             "steps) instead of 24 probes x 200 steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every side (OMP_NUM_THREADS in the "
                             "subprocesses; default: torch's)")
    args = parser.parse_args(argv)
    if args.engine_only and args.whole_only:
        parser.error("--engine-only and --whole-only exclude each other")
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 3)
    only = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    items = variants(args.quick, args.corpus_grid, only)
    if not items:
        parser.error(f"--only {args.only!r} matches no variant")
    print(f"torch {torch.__version__} · {torch.get_num_threads()} threads · "
          f"{os.cpu_count()} cpus · stabcheck at {ROOT} commit {_commit()} · {load_line()}",
          flush=True)
    grid = "corpus grids" if args.corpus_grid else "24 probes"
    print(f"plain/audit > 1: the audit finished sooner than the plain loop · medians of "
          f"{rounds} interleaved round(s) ('rounds': the lowest and highest per-round ratio) · "
          f"{'quick' if args.quick else grid}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_real-") as tmp:
        write_configs(items, Path(tmp))
        previous = signal.signal(signal.SIGTERM, _interrupt)  # kill PID: tables so far
        stopped = False
        for mode, run in (("whole", lambda res: whole_process(items, rounds, args.threads,
                                                              Path(tmp), res)),
                          ("engine", lambda res: engine_only(items, rounds, res))):
            if stopped or (mode == "whole" and args.engine_only) or \
                    (mode == "engine" and args.whole_only):
                continue
            results: dict[str, dict[str, Any]] = {}
            try:
                run(results)
            except KeyboardInterrupt:
                stopped = True
                print("\ninterrupted: the tables below hold the rounds done so far", flush=True)
            for v in items:
                results.setdefault(v.name, {"plain": [], "audit": []})
            print()
            if mode == "whole":
                print("\n".join(table("whole process: python benchmarks/plain_loop.py CONFIG vs "
                                      "stabcheck audit CONFIG (subprocesses)", items, results,
                                      "audit")))
                print(f"({load_line()})\n")
                print("\n".join(phase_table(items, results)), flush=True)
            else:
                print("\n".join(table("engine-only: training in this process, plain loop vs "
                                      "the selected engine (setup, init checks, report "
                                      "excluded)", items, results, "engine")))
                print(f"({load_line()})", flush=True)
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
