"""How many members of one batch size fit in memory stacked together."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stabcheck.engine.base import EngineSettings
from stabcheck.engine.failures import free_memory
from stabcheck.engine.instruments import build_model
from stabcheck.engine.vectorized.stacked import CohortRun
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Problem, TensorData


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _activation_bytes(problem: Problem, data: TensorData, batch_size: int) -> int:
    """Bytes of every module output for one batch: a (generous) activation estimate."""
    model = build_model(problem, 0)
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        for value in (out if isinstance(out, tuple | list) else (out,)):
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            problem.loss_fn(model, data.batch(torch.arange(min(batch_size, data.n),
                                                           device=problem.device)))
    finally:
        for h in handles:
            h.remove()
    return total


def max_members(problem: Problem, settings: EngineSettings, data: TensorData,
                probes: Sequence[ProbeSpec], math_attention: bool = False) -> int:
    """How many members of this batch size fit in memory at once.

    On CUDA the per-member cost is measured: one real step of a 1-member and a 2-member
    cohort, and the difference of their peak allocations. Elsewhere it is estimated from
    the parameter count (weights, gradient, optimizer state and temporaries) plus every
    module output of one batch, against half the available RAM.
    """
    n = len(probes)
    if n <= 1:
        return 1
    device = problem.device
    if device.type == "cuda":
        peaks = []
        for size in (1, 2):
            free_memory(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run = CohortRun(problem, probes[:size], EngineSettings(
                steps=2, dtype=settings.dtype, grad_clip=settings.grad_clip), data,
                math_attention=math_attention)
            run.step(0)
            run.step(1)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            del run
        free_memory(device)
        per_member = max(peaks[1] - peaks[0], 1) * 1.25
        free, _total = torch.cuda.mem_get_info(device)
        budget = 0.8 * free - max(peaks[0] - per_member, 0)
    else:
        numel = sum(p.numel() for p in build_model(problem, 0).parameters())
        per_member = numel * 4 * 12 + 3 * _activation_bytes(problem, data,
                                                           probes[0].batch_size)
        budget = 0.5 * _available_host_bytes()
    return int(max(1, min(n, budget // max(per_member, 1))))
