"""Engine benchmark: the same probe grid run three ways, side by side, in one process.

    python -m benchmarks.bench_engines            # full run (a few minutes on 2 CPU cores)
    python -m benchmarks.bench_engines --quick    # smoke run: tiny grid, one repeat
    python -m benchmarks.bench_engines --per-step --cpu-time --threads 1   # per-step table only

For every grid it times

(a) ``plain``      — a hand-written PyTorch loop with no instrumentation, one run per
                     (lr, seed, batch size): what a user writes (model, torch.optim, loss,
                     backward, step);
(b) ``sequential`` — stabcheck's sequential (reference) engine, fully instrumented;
(c) ``vectorized`` — stabcheck's vectorized engine (backward of the summed losses), and
(c') ``vmap-grad`` — the same engine computing gradients with ``vmap(grad)``.

Variants are interleaved and repeated; each reported time is the median. The ratios
``plain/x`` say how many times faster than the user's own loop stabcheck ran the grid, and
``overhead`` is the sequential engine's per-step instrumentation cost over the bare loop,
``(b - a) / a``. The benchmark prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from stabcheck.builtins.models import MODELS
from stabcheck.config import load_config
from stabcheck.engine import EngineSettings, Events
from stabcheck.engine.sequential import SequentialEngine, SequentialProbe
from stabcheck.engine.vectorized import CohortRun, VectorizedEngine
from stabcheck.plan import make_cohorts, plan_probes
from stabcheck.problem import Problem, build_problem


@dataclass
class Grid:
    """One benchmark grid: a stabcheck config (as a dict)."""

    name: str
    config: dict[str, Any]

    @property
    def n_probes(self) -> int:
        sweep = self.config["sweep"]
        return len(sweep["learning_rates"]) * len(sweep["seeds"]) * len(sweep["batch_sizes"])


def _mlp_grid(name: str, width: int, steps: int, lrs: list[float], seeds: list[int],
              batch_sizes: list[int], device: str) -> Grid:
    return Grid(name, {
        "name": name,
        "model": {"builtin": "mlp", "kwargs": {"in_features": 20, "hidden": [width, width],
                                               "out_features": 4, "activation": "relu"}},
        "data": {"builtin": "blobs", "kwargs": {"n_samples": 2048, "n_features": 20,
                                                "n_classes": 4}},
        "loss": "cross_entropy",
        "optimizer": {"name": "sgd", "kwargs": {"momentum": 0.9}},
        "sweep": {"learning_rates": lrs, "seeds": seeds, "batch_sizes": batch_sizes},
        "probe": {"steps": steps, "device": device},
    })


def _transformer_grid(name: str, steps: int, device: str) -> Grid:
    return Grid(name, {
        "name": name,
        "model": {"builtin": "transformer", "kwargs": {"d_model": 128, "n_layers": 4,
                                                       "n_heads": 4, "seq_len": 64}},
        "data": {"builtin": "text", "kwargs": {"seq_len": 64}},
        "loss": "cross_entropy",
        "optimizer": {"name": "adamw", "kwargs": {"weight_decay": 0.1}},
        "sweep": {"learning_rates": [1e-4, 3e-4, 1e-3, 3e-3], "seeds": [0, 1, 2],
                  "batch_sizes": [16, 32]},
        "probe": {"steps": steps, "device": device},
    })


def grids(quick: bool, device: str) -> list[Grid]:
    """The grids of the issue: quickstart, width 256, and on a GPU two <= 5M models."""
    lrs, seeds, bss = [0.001, 0.003, 0.01, 0.03], [0, 1, 2], [32, 128]
    if quick:
        return [_mlp_grid("quickstart (quick)", 64, 6, lrs[:2], [0], [32], device)]
    out = [_mlp_grid("quickstart mlp w64", 64, 200, lrs, seeds, bss, device),
           _mlp_grid("mlp w256", 256, 200, lrs, seeds, bss, device)]
    if device.startswith("cuda"):
        out += [_mlp_grid("mlp w1024 (1.1M params)", 1024, 200, lrs, seeds, bss, device),
                _transformer_grid("transformer d128 L4 (0.8M params)", 200, device)]
    return out


def load_problem(grid: Grid, workdir: Path) -> tuple[Problem, Any]:
    path = workdir / f"{abs(hash(grid.name))}.yaml"
    path.write_text(yaml.safe_dump(grid.config), encoding="utf-8")
    loaded = load_config(path)
    return build_problem(loaded), loaded.config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(grid: Grid, problem: Problem) -> None:
    """(a) What a user writes: one bare training run per grid point, no instrumentation."""
    cfg = grid.config
    device = problem.device
    tensors = problem.data.to(device).tensors
    assert isinstance(tensors, tuple)
    x_all, y_all = tensors[0], tensors[-1]
    n = x_all.shape[0]
    steps = cfg["probe"]["steps"]
    opt_name, opt_kwargs = cfg["optimizer"]["name"], cfg["optimizer"]["kwargs"]
    opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
               "adamw": torch.optim.AdamW}[opt_name]
    build = MODELS[cfg["model"]["builtin"]]
    for bs in cfg["sweep"]["batch_sizes"]:
        for lr in cfg["sweep"]["learning_rates"]:
            for seed in cfg["sweep"]["seeds"]:
                torch.manual_seed(seed)
                model = build(**cfg["model"]["kwargs"]).to(device)
                opt = opt_cls(model.parameters(), lr=lr, **opt_kwargs)
                perm = torch.randperm(n, device=device)
                pos = 0
                for _ in range(steps):
                    if pos + bs > n:
                        perm, pos = torch.randperm(n, device=device), 0
                    idx = perm[pos:pos + bs]
                    pos += bs
                    out = model(x_all[idx])
                    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]),
                                           y_all[idx].reshape(-1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    _sync(device)


def engine_run(engine: Any, problem: Problem, config: Any) -> None:
    """(b)/(c) One stabcheck engine over the whole grid (records discarded)."""
    settings = EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    keys = {p.index: str(p.index) for p in probes}
    data = problem.data.to(problem.device)
    records: list[Any] = []
    for cohort in make_cohorts(probes):
        engine.run_cohort(problem, cohort, settings, keys, data, Events(records.append))
    assert len(records) == len(probes)
    _sync(problem.device)


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def bench(grid: Grid, repeats: int, workdir: Path) -> dict[str, float]:
    """Median wall time of each variant, interleaved over ``repeats`` rounds."""
    problem, config = load_problem(grid, workdir)
    variants: dict[str, Callable[[], None]] = {
        "plain": lambda: plain_loop(grid, problem),
        "sequential": lambda: engine_run(SequentialEngine(), problem, config),
        "vectorized": lambda: engine_run(VectorizedEngine("sum"), problem, config),
        "vmap-grad": lambda: engine_run(VectorizedEngine("vmap_grad"), problem, config),
    }
    for fn in variants.values():  # warm up: allocators, vmap tracing caches, lazy imports
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_time(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def _bare_step(problem: Problem, lr: float, data: Any, order: torch.Tensor
               ) -> Callable[[int], None]:
    """One user-style training step of a fresh model: forward, loss, backward, step."""
    model = problem.build_model().to(problem.device)
    opt = problem.make_optimizer(list(model.parameters()), lr)

    def step(t: int) -> None:
        loss = problem.loss_fn(model, data.batch(order[t]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _flushing(probe: SequentialProbe) -> Callable[[int], None]:
    """The probe's step, and its buffer's flush every ``flush_every`` steps as the engine's."""
    def step(t: int) -> None:
        probe.step(t)
        if (t + 1) % probe.settings.flush_every == 0:
            probe.buffer.flush(t + 1)
    return step


def _take_turns(variants: dict[str, Callable[[int], None]], steps: int, chunk: int,
                clock: Callable[[], float], device: torch.device) -> dict[str, list[float]]:
    """Per-step times of each variant's chunks, the variants taking turns ``chunk`` steps at
    a time (round 0 warms up)."""
    per_step: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(steps // chunk):
        for name, fn in variants.items():
            start = clock()
            for t in range(r * chunk, (r + 1) * chunk):
                fn(t)
            _sync(device)
            if r:
                per_step[name].append((clock() - start) / chunk)
    return per_step


def step_overhead(grid: Grid, workdir: Path, steps: int, chunk: int,
                  clock: Callable[[], float] = time.perf_counter) -> list[str]:
    """Per-step cost of the instruments: instrumented vs bare step, for both engines.

    Sequential: :class:`SequentialProbe` ``.step`` (and its buffer's flush every
    ``flush_every`` steps, as the engine flushes) against the bare user step (forward, loss,
    backward, ``optimizer.step``) of the same model. Vectorized: the engine's step against
    the same stacked step with nothing measured (``step_uninstrumented``). Setup is excluded.
    Each engine's two variants take turns (a pair on its own, so that one engine's steps do
    not evict the other's from the caches), ``chunk`` steps at a time, over ``steps`` steps,
    timed by ``clock`` (``time.thread_time`` counts only this thread's CPU time: on a machine
    other work keeps busy, wall-clock chunks mostly measure waiting for a core). Each step
    time is the best chunk (the least disturbed by other work on a shared machine, as
    ``timeit`` advises) and, in brackets, the median chunk.
    """
    problem, config = load_problem(grid, workdir)
    data = problem.data.to(problem.device)
    lines = []
    for cohort in make_cohorts(plan_probes(config)):
        settings = EngineSettings(steps=steps)
        spec = cohort.probes[0]
        seq = SequentialProbe(problem, spec, settings, data)
        bare_seq = _bare_step(problem, spec.lr, data, seq.order)
        vec = CohortRun(problem, cohort.probes, settings, data)
        bare_vec = CohortRun(problem, cohort.probes, settings, data)
        per_step = _take_turns({"bare": bare_seq, "seq": _flushing(seq)}, steps, chunk,
                               clock, problem.device)
        per_step |= _take_turns({"vbare": bare_vec.step_uninstrumented, "vec": vec.step},
                                steps, chunk, clock, problem.device)
        best = {k: min(v) * 1e6 for k, v in per_step.items()}
        med = {k: statistics.median(v) * 1e6 for k, v in per_step.items()}

        def over(m: dict[str, float], a: str, b: str) -> float:
            return (m[b] - m[a]) / m[a]

        lines.append(
            f"{grid.name + f' bs{cohort.batch_size}':<30} {len(cohort.probes):>7} "
            f"{best['bare']:>7.0f}us {best['seq']:>7.0f}us "
            f"{over(best, 'bare', 'seq'):>+7.1%} ({over(med, 'bare', 'seq'):>+6.1%}) "
            f"{best['vbare']:>7.0f}us {best['vec']:>7.0f}us "
            f"{over(best, 'vbare', 'vec'):>+7.1%} ({over(med, 'vbare', 'vec'):>+6.1%})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default=None, help="run only grids whose name contains this")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every variant (default: torch's)")
    parser.add_argument("--per-step", action="store_true",
                        help="only the per-step overhead table, not the whole grids")
    parser.add_argument("--cpu-time", action="store_true",
                        help="per-step table: time this thread's CPU time, not wall clock")
    parser.add_argument("--steps", type=int, default=None,
                        help="per-step table: steps per variant (default 400)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"torch {torch.__version__} · device {args.device} · "
          f"{torch.get_num_threads()} threads · {os.cpu_count()} cpus · {_load()}")
    header = (f"{'grid':<36} {'probes':>6} {'plain(a)':>9} {'seq(b)':>9} {'vec(c)':>9} "
              f"{'vgrad':>9} {'a/c':>6} {'a/vgrad':>7} {'a/b':>6} {'overhead':>9}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for grid in [] if args.per_step else grids(args.quick, args.device):
            if args.only and args.only not in grid.name:
                continue
            t = bench(grid, repeats, Path(tmp))
            rows.append(
                f"{grid.name:<36} {grid.n_probes:>6} {t['plain']:>8.2f}s {t['sequential']:>8.2f}s "
                f"{t['vectorized']:>8.2f}s {t['vmap-grad']:>8.2f}s "
                f"{t['plain'] / t['vectorized']:>5.1f}x {t['plain'] / t['vmap-grad']:>6.1f}x "
                f"{t['plain'] / t['sequential']:>5.2f}x "
                f"{(t['sequential'] - t['plain']) / t['plain']:>+8.1%}")
            print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)
    if rows:
        print(f"medians of {repeats} interleaved rounds · {_load()}")
        print()
    print("per-step instrumentation overhead (setup excluded; a vectorized step trains the "
          "whole cohort)")
    print(f"{'grid':<30} {'members':>7} {'bare':>9} {'seq':>9} {'overhead (median)':>17} "
          f"{'vec bare':>9} {'vec':>9} {'overhead (median)':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        for grid in grids(args.quick, args.device):
            if args.only and args.only not in grid.name:
                continue
            steps, chunk = (8, 2) if args.quick else (args.steps or 400, 10)
            clock = time.thread_time if args.cpu_time else time.perf_counter
            for line in step_overhead(grid, Path(tmp), steps, chunk, clock):
                print(line, flush=True)
    print(f"best chunk of {chunk} steps (median chunk), "
          f"{'thread CPU time' if args.cpu_time else 'wall clock'} · {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
