"""What curvature tracking costs, measured side by side in one run.

    python -m benchmarks.bench_curvature            # full run
    python -m benchmarks.bench_curvature --quick    # smoke run (seconds)

For each model it prints:

* ``hvp / step`` — one Hessian-vector product (one ``autograd.grad`` on the retained gradient
  graph, the unit power iteration repeats) against one instrumented training step of the
  sequential engine, both on the same batch (target <= 1.5x);
* ``hvp@probe / step`` — the same product on the fixed curvature batch (``--curvature-batch``;
  by default the probe's batch size, like ``probe.curvature_batch: null``) against a training
  step, which is what tracking actually pays per product;
* ``overhead`` — amortised cost of tracking at a cadence: (probe time with
  ``curvature_every`` - probe time without) / probe time without (target <= 25%), with the
  products a probe's measurements took in total.

Then, side by side on the same batches of tiny models whose dense Hessian is affordable
(``n`` Hessian-vector products on the unit vectors), the two eigensolvers of one
sharpness measurement at the init settings (``tol`` 1e-3, at most 20 products): power
iteration (with its shifted second pass when the dominant eigenvalue is negative) and
Lanczos. For each: products taken, relative error against the dense top eigenvalue, and the
median time of a measurement.

Timings interleave the variants (A B A B ...) and report medians, so that load on a shared
machine hits both alike. Numbers are ratios on this machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from stabcheck.builtins.data import blobs, images, text
from stabcheck.builtins.models import cnn, mlp, transformer
from stabcheck.engine import EngineSettings
from stabcheck.engine.curvature import HessianVectorProduct, probe_batch_index, top_eigenvalue
from stabcheck.engine.curvature.linalg import random_like
from stabcheck.engine.sequential import SequentialProbe, run_probe
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Problem, TensorData, _builtin_criterion, make_loss_fn


def _problem(name: str, device: torch.device) -> tuple[Problem, int]:
    ce = make_loss_fn("cross_entropy", _builtin_criterion("cross_entropy"), "labels")
    data: tuple[torch.Tensor, torch.Tensor]
    builder: Callable[[], torch.nn.Module]
    if name == "mlp":
        data = blobs(n_samples=2048, n_features=20, n_classes=4)
        def builder() -> torch.nn.Module:
            return mlp(in_features=20, hidden=[64, 64], out_features=4)
        batch = 128
    elif name == "cnn":
        data = images(n_samples=1024, image_size=16, n_classes=4)
        def builder() -> torch.nn.Module:
            return cnn(in_channels=1, channels=[16, 32], num_classes=4)
        batch = 64
    else:
        data = text(seq_len=32, max_samples=1024)
        def builder() -> torch.nn.Module:
            return transformer(vocab_size=128, seq_len=32, d_model=64, n_layers=2, n_heads=4)
        batch = 32

    def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=0.9)

    problem = Problem(build_model=builder, data=TensorData(data).to(device), loss_fn=ce,
                      make_optimizer=make_optimizer, optimizer_name="sgd",
                      optimizer_kwargs={"momentum": 0.9}, device=device, num_classes=4,
                      loss_name="cross_entropy")
    return problem, batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def hvp_vs_step(problem: Problem, batch: int, rounds: int, repeats: int,
                curvature_batch: int | None = None) -> dict[str, float]:
    """Median seconds of one training step, one HVP on the same batch, one on the probe batch."""
    device = problem.device
    settings = EngineSettings(steps=rounds * repeats * 4 + 8, flush_every=10_000)
    probe = SequentialProbe(problem, ProbeSpec(batch_size=batch, lr=1e-4, seed=0), settings,
                            problem.data)
    frozen = copy.deepcopy(probe.model)  # the training steps below must not touch its graph
    same = HessianVectorProduct(frozen, problem.loss_fn, problem.data.batch(probe.order[0]))
    index = probe_batch_index(0, problem.data.n, device, curvature_batch or batch)
    fixed = HessianVectorProduct(frozen, problem.loss_fn, problem.data.batch(index))
    v = [torch.randn_like(p) for p in same.params]
    t = 0
    steps, hvps, hvps_probe = [], [], []

    def step() -> None:
        nonlocal t
        probe.step(t)
        t += 1

    for _ in range(rounds):
        steps.append(_time(step, device, repeats))
        hvps.append(_time(lambda: same(v), device, repeats))
        hvps_probe.append(_time(lambda: fixed(v), device, repeats))
    return {"step": statistics.median(steps), "hvp": statistics.median(hvps),
            "hvp_probe": statistics.median(hvps_probe)}


def tracking_overhead(problem: Problem, batch: int, steps: int, every: int,
                      rounds: int, curvature_batch: int | None = None) -> dict[str, float]:
    """Median probe wall time without and with ``curvature_every``; products per probe."""
    spec = ProbeSpec(batch_size=batch, lr=0.01, seed=0)
    plain = EngineSettings(steps=steps, flush_every=50)
    tracked = EngineSettings(steps=steps, flush_every=50, curvature_every=every,
                             curvature_batch=curvature_batch)
    without, with_, hvps, measures = [], [], 0, 0
    for _ in range(rounds):
        start = time.perf_counter()
        run_probe(problem, spec, plain, "bench")
        without.append(time.perf_counter() - start)
        start = time.perf_counter()
        record = run_probe(problem, spec, tracked, "bench")
        with_.append(time.perf_counter() - start)
        curv = record.curvature or {}
        hvps, measures = int(curv.get("hvps", 0)), len(curv.get("steps", []))
    a, b = statistics.median(without), statistics.median(with_)
    return {"without": a, "with": b, "overhead": (b - a) / a, "hvps": hvps, "measures": measures}


def _tiny(name: str, seed: int) -> tuple[torch.nn.Module, Any]:
    """A model small enough for a dense Hessian (~1-2k parameters) and its batch."""
    torch.manual_seed(seed)
    if name == "mlp":
        return mlp(in_features=8, hidden=[24, 24], out_features=4, activation="tanh"), \
            blobs(n_samples=256, n_features=8, n_classes=4)
    if name == "cnn":
        return cnn(in_channels=1, channels=[4, 8], num_classes=4), \
            images(n_samples=128, image_size=8, n_classes=4)
    tokens = text(seq_len=8, max_samples=64)
    return transformer(vocab_size=128, seq_len=8, d_model=8, n_layers=1, n_heads=2), tokens


def dense_top(hvp: HessianVectorProduct) -> tuple[float, float]:
    """The largest and smallest eigenvalue of the dense Hessian, built column by column."""
    sizes = [p.numel() for p in hvp.params]
    columns = []
    for i in range(sum(sizes)):
        unit = torch.zeros(sum(sizes), dtype=torch.float32)
        unit[i] = 1.0
        parts = list(unit.split(sizes))
        columns.append(torch.cat([h.reshape(-1).double()
                                  for h in hvp([u.view_as(p) for u, p in
                                                zip(parts, hvp.params, strict=True)])]))
    dense = torch.stack(columns)
    spectrum = torch.linalg.eigvalsh(0.5 * (dense + dense.T))
    return float(spectrum[-1]), float(spectrum[0])


def eigensolvers(name: str, seed: int, rounds: int) -> dict[str, Any]:
    """Power iteration vs Lanczos on one tiny model: products, error vs dense, median time."""
    ce = make_loss_fn("cross_entropy", _builtin_criterion("cross_entropy"), "labels")
    model, batch = _tiny(name, seed)
    hvp = HessianVectorProduct(model, ce, batch)
    top, bottom = dense_top(hvp)
    out: dict[str, Any] = {"params": sum(p.numel() for p in hvp.params), "top": top,
                           "bottom": bottom}
    times: dict[str, list[float]] = {"power": [], "lanczos": []}
    for _ in range(rounds):
        for method in times:  # interleaved
            start = random_like(hvp.params, seed)
            began = time.perf_counter()
            found = top_eigenvalue(hvp, start, method)
            times[method].append(time.perf_counter() - began)
            out[method] = {"hvps": found.iterations, "error": (found.value - top) / abs(top)}
    for method, values in times.items():
        out[method]["ms"] = statistics.median(values) * 1e3
    return out


def print_eigensolvers(models: list[str], seeds: int, rounds: int) -> None:
    """The side-by-side table of :func:`eigensolvers`."""
    print(f"\n{'model':<12}{'seed':>5}{'params':>7}{'dense top':>10}{'dense min':>10}"
          f"{'power hvps':>11}{'power err':>11}{'power ms':>9}"
          f"{'lanczos hvps':>13}{'lanczos err':>12}{'lanczos ms':>11}")
    for name in models:
        for seed in range(seeds):
            r = eigensolvers(name, seed, rounds)
            p, z = r["power"], r["lanczos"]
            print(f"{name:<12}{seed:>5}{r['params']:>7}{r['top']:>10.4g}{r['bottom']:>10.4g}"
                  f"{p['hvps']:>11}{p['error']:>+11.2e}{p['ms']:>9.2f}"
                  f"{z['hvps']:>13}{z['error']:>+12.2e}{z['ms']:>11.2f}")


def main(argv: list[str] | None = None) -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="mlp,cnn,transformer")
    parser.add_argument("--steps", type=int, default=None, help="steps per probe (200)")
    parser.add_argument("--every", type=int, default=50, help="curvature_every (50)")
    parser.add_argument("--curvature-batch", type=int, default=None,
                        help="probe.curvature_batch (default: the probe's batch size)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: a shared "
                        "machine's load then hits both sides alike instead of stalling "
                        "thread pools)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds, repeats = (2, 2) if args.quick else (5, 10)
    steps = args.steps or (20 if args.quick else 200)
    every = min(args.every, steps)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"probe {steps} steps, curvature_every {every}, "
          f"curvature batch {args.curvature_batch or 'probe batch size'}")
    header = (f"{'model':<12}{'batch':>6}{'step ms':>9}{'hvp ms':>9}{'hvp/step':>10}"
              f"{'hvp@probe/step':>16}{'probe s':>9}{'tracked s':>11}{'overhead':>10}"
              f"{'hvps':>6}{'measures':>10}")
    print(header)
    for name in args.models.split(","):
        problem, batch = _problem(name.strip(), device)
        cost = hvp_vs_step(problem, batch, rounds, repeats, args.curvature_batch)
        over = tracking_overhead(problem, batch, steps, every, 1 if args.quick else 3,
                                 args.curvature_batch)
        print(f"{name:<12}{batch:>6}{cost['step'] * 1e3:>9.2f}{cost['hvp'] * 1e3:>9.2f}"
              f"{cost['hvp'] / cost['step']:>9.2f}x{cost['hvp_probe'] / cost['step']:>15.2f}x"
              f"{over['without']:>9.2f}{over['with']:>11.2f}{over['overhead']:>9.0%} "
              f"{over['hvps']:>6}{over['measures']:>10}")
    print_eigensolvers([m.strip() for m in args.models.split(",")], 1 if args.quick else 3,
                       1 if args.quick else 5)
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
