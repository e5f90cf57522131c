"""Engine-only wall time on calibration corpus models: sequential vs vectorized, same grid.

    python -m benchmarks.bench_corpus_engines                     # the RNN and RMSprop configs
    python -m benchmarks.bench_corpus_engines --models gru-rmsprop --rounds 5
    python -m benchmarks.bench_corpus_engines --big               # 6 LRs x 2 seeds x 200 steps
    python -m benchmarks.bench_corpus_engines --breakeven         # the LSTM speed rule

Each config's grid (or, with ``--big``, 6 learning rates spread geometrically over the
config's range x 2 seeds, 200 steps) is trained by both engines, interleaved round by round,
records discarded; the medians and their ratio are printed with the load average. The
vectorized engine runs as the default one does (members whose loss runs away are re-run
sequentially); the one-off engine-selection trial is timed on its own line. Nothing asserted.

``--breakeven`` measures the rule of ``rnn.slower_reason`` (when torch's fused CPU LSTM beats
the stacked recurrence): on the corpus LSTM (hidden 32, batch 16), for each sequence length
and member count, one stacked step of M members against M sequential steps, the two taking
turns 5 steps at a time (thread CPU time, medians), with the members per time step at which
they break even.
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
from stabcheck.engine.sequential import SequentialEngine, SequentialProbe
from stabcheck.engine.vectorized import VectorizedEngine, select_engine
from stabcheck.engine.vectorized.stacked import CohortRun
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


def _step_cost(step: Callable[[int], None], start: int, rounds: int) -> Callable[[], float]:
    """A timer of 5 more steps of ``step`` (thread CPU seconds per step)."""
    state = {"t": start}

    def timed() -> float:
        begin = time.thread_time()
        for _ in range(5):
            step(state["t"])
            state["t"] += 1
        return (time.thread_time() - begin) / 5
    return timed


def breakeven(lengths: list[int], members: list[int], rounds: int) -> list[str]:
    """Stacked vs sequential step of the corpus LSTM per sequence length and member count."""
    [path] = config_paths(["lstm-sgd-nesterov"])
    lines = [f"{'length':>6} {'members':>7} {'stacked step':>12} {'M x sequential':>14} "
             f"{'seq/stacked':>11}"]
    for length in lengths:
        ratios: dict[int, float] = {}
        for m in members:
            loaded = load_config(path, overrides={
                "data.kwargs": {"length": length}, "probe.steps": 5 * (2 * rounds + 1),
                "sweep.learning_rates": [0.01 * (1 + k / 10) for k in range(m)],
                "sweep.seeds": [0], "sweep.batch_sizes": [16]})
            problem = build_problem(loaded)
            settings = EngineSettings.from_config(loaded.config.probe)
            probes = plan_probes(loaded.config)
            run = CohortRun(problem, probes, settings, problem.data)
            seq = SequentialProbe(problem, probes[0], settings, problem.data)
            for t in range(5):  # warm-up
                run.step(t)
                seq.step(t)
            stacked, single = _step_cost(run.step, 5, rounds), _step_cost(seq.step, 5, rounds)
            times: dict[str, list[float]] = {"stacked": [], "seq": []}
            for _ in range(rounds):
                times["stacked"].append(stacked())
                times["seq"].append(single())
            vec, one = statistics.median(times["stacked"]), statistics.median(times["seq"])
            ratios[m] = m * one / vec
            lines.append(f"{length:>6} {m:>7} {vec * 1e3:>10.2f}ms {m * one * 1e3:>12.2f}ms "
                         f"{ratios[m]:>10.2f}x")
        even = next((m for m in members if ratios[m] >= 1.0), None)
        lines.append(f"{'':>6} breaks even at {even} members ({length / even:.1f} time steps "
                     f"per member)" if even else f"{'':>6} sequential wins at every size")
    lines.append(f"({_load()})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_corpus_engines")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--breakeven", action="store_true",
                        help="the LSTM speed rule: stacked vs sequential step by length/members")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--members", type=int, nargs="+", default=[2, 3, 4, 6, 8, 12, 16, 24])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.breakeven:
        print("\n".join(breakeven(args.lengths, args.members, args.rounds)), flush=True)
        return 0
    for name in args.models:
        print(bench(name, args.rounds, args.big), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
