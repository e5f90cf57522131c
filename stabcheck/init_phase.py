"""The audit's before-training phase: init checks per seed, curvature at init once per audit.

What does not depend on the seed is decided once (the optimizer's stability rule, whether an
LR ceiling is predicted at all, the budget of :mod:`stabcheck.engine.curvature.budget`); the
noise scale is measured once; the init checks, the sharpness and the Lipschitz bound per seed,
since they depend on the initial weights. ``probe.init_curvature: false`` skips the curvature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stabcheck.engine.curvature import PROBE_BATCH, init_curvature
from stabcheck.engine.curvature.budget import INIT_BUDGET, InitPlan
from stabcheck.engine.curvature.init import plan_for
from stabcheck.engine.initcheck import initial_checks
from stabcheck.executors.hygiene import time_limit
from stabcheck.problem import Problem, TensorData
from stabcheck.schema import AuditConfig

CUSTOM_NO_CURVATURE = "not measured: a custom training step has no plain loss function"
SWITCHED_OFF = "curvature at init: off (probe.init_curvature: false)"


def _has_noise(report: Mapping[str, Any]) -> bool:
    curvature = report.get("curvature")
    return isinstance(curvature, dict) and bool(curvature.get("noise_scale"))


def reduced_note(plan: InitPlan, seeds: Sequence[int], full_batch: int) -> str | None:
    """A note for the report when the budget cut the measurement down, else ``None``."""
    if plan.budget is None:
        return None
    noise = (f"from {plan.noise_draws} draws" if plan.noise_draws else "not measured")
    if not plan.sharpness:  # nothing but the noise scale was planned (Adam, RMSprop)
        return None if plan.noise_draws else (
            f"curvature at init within its budget ({INIT_BUDGET:.0%} of the probes' "
            "example-gradients): noise scale not measured")
    if (len(plan.sharpness_seeds) == len(seeds) and plan.batch == full_batch
            and plan.noise_draws):
        return None
    measured = ", ".join(map(str, plan.sharpness_seeds)) or "none"
    return (f"curvature at init within its budget ({INIT_BUDGET:.0%} of the probes' "
            f"example-gradients): "
            f"sharpness of seed(s) {measured} on {plan.batch} examples, at most "
            f"{plan.max_iters} Lanczos steps; noise scale {noise}")


def run_init_phase(problem: Problem, cfg: AuditConfig, data: TensorData, seeds: Sequence[int],
                   probe_cost: float, journaled: Mapping[int, Mapping[str, Any]],
                   append: Callable[[int, dict[str, Any]], None],
                   note: Callable[[str], None], phase: Callable[[str], None],
                   stop_requested: Callable[[], bool], timeout_s: float | None) -> None:
    """Measure the seeds in ``seeds`` (not yet journaled) and ``append`` each seed's report.

    ``probe_cost`` is ``sum(steps x batch_size)`` over the grid's probes; ``journaled``
    the init reports already in the journal (a resumed audit does not measure the noise
    scale twice); ``note`` records a line in the report.
    """
    if not seeds:
        return
    plan: InitPlan | None = None
    if problem.step_fn is None and cfg.probe.init_curvature:
        full = cfg.probe.curvature_batch or PROBE_BATCH
        plan = plan_for(problem, seeds, data.n, cfg.sweep.batch_sizes, probe_cost, full)
        message = reduced_note(plan, seeds, min(data.n, full))
        if message:
            note(message)
    elif problem.step_fn is None:
        note(SWITCHED_OFF)
    noise_done = any(_has_noise(r) for r in journaled.values())
    for seed in seeds:
        if stop_requested():
            break
        phase(f"init checks, seed {seed}")
        with time_limit(timeout_s, f"the init checks of seed {seed}"):
            report = initial_checks(problem, seed, data)
            if problem.step_fn is not None:
                report["curvature"] = {"error": CUSTOM_NO_CURVATURE}
            elif plan is not None:
                phase(f"curvature at init, seed {seed}")
                report["curvature"] = init_curvature(problem, seed, data, cfg.sweep.batch_sizes,
                                                     plan.batch, plan=plan,
                                                     noise=not noise_done)
                noise_done = noise_done or _has_noise(report)
        append(seed, report)
