"""Cost of the process executor against the in-process one, measured side by side.

    python -m benchmarks.bench_executors [--probes 8] [--steps 100] [--repeat 3]
    python -m benchmarks.bench_executors --scale-out [--repeat 3]
    python -m benchmarks.bench_executors --grids [--repeat 3]
    python -m benchmarks.bench_executors --startup [--repeat 3]

``--scale-out``: ``local`` against ``processes --workers 2`` on the quickstart sample and on a
grid of four cohorts (four batch sizes), interleaved, medians, with the load average.

``--grids``: the whole audit in-process (all of torch's intra-op threads) against two
workers with ``cores/2`` threads each (forked from the preloaded fork server, and spawned as
before), on the built-in grids (quickstart-like MLP, 24 probes x 500 steps, two cohorts; the
same at width 256) and on the calibration corpus's LSTM with a second batch size (two
cohorts); interleaved, medians, ratios, worker start-up, load average.

``--startup``: one worker's start-up (start → problem rebuilt → ready) on a one-probe config,
forked from the fork server (warm after the first round) and spawned, interleaved.

Runs the same tiny CPU audit with ``--executor local`` and ``--executor process`` (one
worker, started with ``spawn``) and prints the wall times, their ratio, and the worker's
start-up time (spawn → problem rebuilt → ready). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config
from stabcheck.executors.local import LocalExecutor
from stabcheck.executors.process import ProcessExecutor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale-out", action="store_true",
                        help="local vs processes --workers 2 (quickstart, 4-cohort grid)")
    parser.add_argument("--grids", action="store_true",
                        help="in-process vs two workers on the built-in grids and an LSTM")
    parser.add_argument("--only", default=None, help="with --grids: one grid by name")
    parser.add_argument("--startup", action="store_true",
                        help="a worker's start-up: fork server vs spawn")
    args = parser.parse_args()
    if args.startup:
        startup(args.repeat)
        return
    if args.scale_out:
        scale_out(args.repeat)
        return
    if args.grids:
        grids(args.repeat, args.only)
        return
    torch.set_num_threads(1)
    lrs = [float(f"{10 ** (-3 + 2 * i / max(1, args.probes - 1)):.4g}")
           for i in range(args.probes)]
    cfg = {"name": "bench", "model": {"builtin": "mlp", "kwargs": {
        "in_features": 16, "hidden": [64, 64], "out_features": 4}},
        "data": {"builtin": "blobs", "kwargs": {"n_samples": 512, "n_features": 16,
                                                "n_classes": 4}},
        "sweep": {"learning_rates": lrs, "seeds": [0], "batch_sizes": [32]},
        "probe": {"steps": args.steps, "device": "cpu"}}
    proc_executor = ProcessExecutor()  # one object, so its start-up times add up
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        loaded = load_config(path)
        times: dict[str, list[float]] = {"local": [], "process": []}
        for r in range(args.repeat):
            for name in ("local", "process"):  # interleaved, so load drifts hit both
                started = time.perf_counter()
                executor = proc_executor if name == "process" else LocalExecutor()
                run_audit(loaded, AuditOptions(out_dir=Path(tmp) / f"{name}{r}",
                                               executor=executor))
                times[name].append(time.perf_counter() - started)
    local, proc = statistics.median(times["local"]), statistics.median(times["process"])
    print(f"audit of {args.probes} probes x {args.steps} steps, CPU, median of "
          f"{args.repeat} runs")
    print(f"  local executor    {local:7.2f} s")
    print(f"  process executor  {proc:7.2f} s   ratio process/local = {proc / local:.2f}")
    startups = proc_executor.startup_s
    print(f"  worker start-up (spawn, import torch, rebuild problem): median "
          f"{statistics.median(startups):.2f} s over {len(startups)} workers")
    print(f"  overhead per audit: {proc - local:+.2f} s")


SAMPLES = Path(__file__).resolve().parent.parent / "sample_configs"


def scale_out(repeat: int) -> None:
    """``local`` vs ``processes --workers 2``, interleaved, medians of ``repeat`` rounds."""
    grid = yaml.safe_load((SAMPLES / "quickstart.yaml").read_text(encoding="utf-8"))
    grid["name"] = "four-cohorts"
    grid["sweep"]["batch_sizes"] = [16, 32, 48, 64]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.yaml"
        path.write_text(yaml.safe_dump(grid), encoding="utf-8")
        for name, config in (("quickstart", SAMPLES / "quickstart.yaml"), ("4 cohorts", path)):
            loaded = load_config(config)
            times: dict[str, list[float]] = {"local": [], "processes": []}
            for r in range(repeat):
                for kind in times:
                    executor = LocalExecutor() if kind == "local" else \
                        ProcessExecutor(workers=2)
                    started = time.perf_counter()
                    run_audit(loaded, AuditOptions(out_dir=Path(tmp) / f"{name}{kind}{r}",
                                                   executor=executor))
                    times[kind].append(time.perf_counter() - started)
            local = statistics.median(times["local"])
            spread = statistics.median(times["processes"])
            print(f"{name}: local {local:6.2f} s   processes --workers 2 {spread:6.2f} s   "
                  f"ratio processes/local = {spread / local:.2f}   (median of {repeat}; "
                  f"load average {os.getloadavg()[0]:.2f})")


CALIBRATION = SAMPLES.parent / "calibration" / "configs"


def _grid_configs(tmp: Path) -> dict[str, Path]:
    """The grids of ``--grids``, written under ``tmp`` (the LSTM one next to its factories)."""
    quick = yaml.safe_load((SAMPLES / "quickstart.yaml").read_text(encoding="utf-8"))
    quick["probe"]["steps"] = 500
    quick["probe"]["device"] = "cpu"
    wide = yaml.safe_load(yaml.safe_dump(quick))
    wide["model"]["kwargs"]["hidden"] = [256, 256]
    lstm = yaml.safe_load((CALIBRATION / "lstm-sgd-nesterov.yaml").read_text(encoding="utf-8"))
    lstm["sweep"]["batch_sizes"] = [16, 32]
    paths = {}
    for name, cfg, where in (("mlp-quickstart-500", quick, tmp),
                             ("mlp-width256-500", wide, tmp),
                             ("lstm-2-cohorts", lstm, CALIBRATION)):
        cfg["name"] = name
        path = where / f"_bench_{name}.yaml" if where is CALIBRATION else where / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        paths[name] = path
    return paths


def grids(repeat: int, only: str | None) -> None:
    """In-process against two workers on each grid, interleaved, medians of ``repeat``."""
    cores = os.cpu_count() or 1
    variants = {"local": LocalExecutor, "2 workers": lambda: ProcessExecutor(workers=2),
                "2 spawned": lambda: ProcessExecutor(workers=2)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _grid_configs(Path(tmp))
        try:
            for name, path in paths.items():
                if only is not None and name != only:
                    continue
                loaded = load_config(path)
                times: dict[str, list[float]] = {kind: [] for kind in variants}
                startups: dict[str, list[float]] = {kind: [] for kind in variants}
                for r in range(repeat):
                    for kind, make in variants.items():  # interleaved: load drift hits both
                        executor = make()
                        # "2 spawned": the workers started with spawn, as before the fork server
                        os.environ["STABCHECK_WORKER_START"] = \
                            "spawn" if kind == "2 spawned" else "forkserver"
                        started = time.perf_counter()
                        run_audit(loaded, AuditOptions(out_dir=Path(tmp) / f"{name}{kind}{r}",
                                                       executor=executor))
                        times[kind].append(time.perf_counter() - started)
                        os.environ.pop("STABCHECK_WORKER_START")
                        startups[kind] += getattr(executor, "startup_s", [])
                local = statistics.median(times["local"])
                print(f"{name}: local ({torch.get_num_threads()} threads) {local:6.2f} s "
                      f"[{_fmt(times['local'])}]", flush=True)
                for kind in ("2 workers", "2 spawned"):
                    spread = statistics.median(times[kind])
                    start = statistics.median(startups[kind]) if startups[kind] else float("nan")
                    print(f"  {kind} x {max(1, cores // 2)} threads {spread:6.2f} s "
                          f"[{_fmt(times[kind])}]  local/parallel = {local / spread:.2f}  "
                          f"worker start-up median {start:.2f} s", flush=True)
                print(f"  (median of {repeat} interleaved rounds; load average "
                      f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())})", flush=True)
        finally:
            for path in paths.values():
                if path.parent == CALIBRATION:
                    path.unlink(missing_ok=True)


def startup(repeat: int) -> None:
    """A worker's start-up, forked from the fork server and spawned, interleaved."""
    cfg = {"name": "startup", "model": {"builtin": "mlp", "kwargs": {
        "in_features": 4, "hidden": [8], "out_features": 3}},
        "data": {"builtin": "blobs", "kwargs": {"n_samples": 96, "n_features": 4,
                                                "n_classes": 3}},
        "sweep": {"learning_rates": [0.01], "seeds": [0], "batch_sizes": [16]},
        "probe": {"steps": 5, "device": "cpu"}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "startup.yaml"
        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        loaded = load_config(path)
        for r in range(repeat):
            for kind in ("forkserver", "spawn"):
                os.environ["STABCHECK_WORKER_START"] = kind
                executor = ProcessExecutor()
                run_audit(loaded, AuditOptions(out_dir=Path(tmp) / f"{kind}{r}",
                                               executor=executor))
                os.environ.pop("STABCHECK_WORKER_START")
                note = " (cold: the server imports torch first)" \
                    if kind == "forkserver" and r == 0 else ""
                print(f"round {r}: {kind:10s} start-up {executor.startup_s[0]:6.2f} s{note}   "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
