"""Engine-only wall time on calibration corpus models: sequential vs vectorized, same grid.

    python -m benchmarks.bench_corpus_engines                     # the RNN and RMSprop configs
    python -m benchmarks.bench_corpus_engines --models gru-rmsprop --rounds 5
    python -m benchmarks.bench_corpus_engines --big               # 6 LRs x 2 seeds x 200 steps

Each config's grid (or, with ``--big``, 6 learning rates spread geometrically over the
config's range x 2 seeds, 200 steps) is trained by both engines, interleaved round by round,
records discarded; the medians and their ratio are printed with the load average. The
vectorized engine runs as the default one does (members whose loss runs away are re-run
sequentially); the one-off engine-selection trial is timed on its own line. Nothing asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks.bench_engines import engine_run
from calibration.corpus import config_paths
from stabcheck.config import load_config
from stabcheck.engine import EngineSettings
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine, select_engine
from stabcheck.plan import plan_probes
from stabcheck.problem import build_problem

DEFAULT = ("lstm-sgd-nesterov", "gru-adam-safe", "gru-rmsprop", "mobilenetv2-rmsprop")


def _load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, rounds: int, big: bool) -> str:
    [path] = config_paths([name])
    loaded = load_config(path)
    if big:
        lrs = loaded.config.sweep.learning_rates
        loaded = load_config(path, overrides={
            "sweep.learning_rates": np.geomspace(min(lrs), max(lrs), 6).tolist(),
            "sweep.seeds": [0, 1], "probe.steps": 200})
    config = loaded.config
    problem = build_problem(loaded)
    settings = EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    started = time.perf_counter()
    engine, note = select_engine(problem, "auto", settings, problem.data, probes)
    trial = time.perf_counter() - started
    if not isinstance(engine, VectorizedEngine):
        return f"{name}: falls back ({note})"
    variants = {"sequential": lambda: engine_run(SequentialEngine(), problem, config),
                "vectorized": lambda: engine_run(engine, problem, config)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            times[key].append(_timed(fn))
    seq, vec = (statistics.median(times[k]) for k in variants)
    steps = config.probe.steps
    return (f"{name:22s} {len(probes):3d} probes x {steps:3d} steps  sequential {seq:7.2f}s  "
            f"vectorized {vec:7.2f}s  seq/vec {seq / vec:5.2f}x  (trial {trial:.2f}s; "
            f"{_load()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_corpus_engines")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.models:
        print(bench(name, args.rounds, args.big), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
