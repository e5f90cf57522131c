"""Cost of the process executor against the in-process one, measured side by side.

    python -m benchmarks.bench_executors [--probes 8] [--steps 100] [--repeat 3]
    python -m benchmarks.bench_executors --scale-out [--repeat 3]

``--scale-out``: ``local`` against ``processes --workers 2`` on the quickstart sample and on a
grid of four cohorts (four batch sizes), interleaved, medians, with the load average.

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
    args = parser.parse_args()
    if args.scale_out:
        scale_out(args.repeat)
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


if __name__ == "__main__":
    main()
