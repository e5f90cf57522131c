"""How much the curvature at init may cost: a budget relative to the probes it precedes.

The rule (docs/engines.md, "Curvature at init"): the measurements before training may take at
most :data:`INIT_BUDGET` (10%) of the *example-gradients* the probes will compute, that is
of ``sum over the grid's probes of steps x batch_size``. Costs are counted in the same unit:
a gradient on ``B`` examples costs ``B``, building the Hessian-vector graph ``GRAPH_COST x B``, one
Hessian-vector product ``HVP_COST x B`` (double backward is about 1.5 gradients; 2 leaves
room). Counting examples instead of seconds makes the plan a pure function of the config and
the data size: two runs of one audit measure exactly the same thing, so their reports agree.
It is conservative where it is wrong: small-batch training steps cost more per example than
the large curvature batch does, so the real share of wall time is lower than the budget says.

Within the budget, in order:

1. the gradient noise scale, once per audit, takes up to :data:`NOISE_SHARE` of it, with
   ``NOISE_DRAWS`` pairs of batches down to :data:`MIN_NOISE_DRAWS` (fewer do not fit: not
   measured);
2. the sharpness takes the rest, split over the seeds: the batch is halved from
   ``curvature_batch`` (512) down to :data:`MIN_BATCH` until :data:`MIN_ITERS` Lanczos steps fit
   per seed, with as many more steps as fit, up to ``MAX_ITERS``; when not even that fits, fewer
   seeds are measured (the first ones), down to one seed, which is always measured at the
   smallest batch and :data:`MIN_ITERS` steps (a small, fixed cost).

Adaptive optimizers (Adam, AdamW, RMSprop) get no LR ceiling at init, so their sharpness at
init is not measured at all; their budget goes to the noise scale alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stabcheck.engine.curvature.linalg import MAX_ITERS
from stabcheck.engine.curvature.measure import PROBE_BATCH
from stabcheck.engine.curvature.noise import NOISE_DRAWS

INIT_BUDGET = 0.10  # share of the probes' example-gradients the curvature at init may cost
NOISE_SHARE = 0.25  # of that budget, at most this share for the noise scale
GRAPH_COST = 2.0  # building the Hessian-vector graph (forward + create_graph backward), per example
HVP_COST = 2.0  # one Hessian-vector product, in gradients per example
MIN_BATCH = 64  # smallest curvature batch the budget shrinks to
MIN_ITERS = 8  # Lanczos steps below which a measurement is not worth its graph
MIN_NOISE_DRAWS = 2


@dataclass(frozen=True)
class InitPlan:
    """What the curvature at init measures, decided once per audit (plain data)."""

    sharpness_seeds: tuple[int, ...]  # seeds whose sharpness is measured
    batch: int  # examples in the fixed curvature batch
    max_iters: int  # Lanczos steps at most, per seed
    noise_draws: int  # 0: the noise scale is not measured
    budget: float | None  # example-gradients allowed (None: no budget, e.g. --predict-only)
    cost: float  # example-gradients the plan spends at most
    probe_cost: float | None  # example-gradients of the probes
    sharpness: bool = True  # False: the optimizer's ceiling needs no sharpness at init (Adam)

    def describe(self) -> dict[str, object]:
        """The plan as it goes into the init report."""
        return {"sharpness_seeds": list(self.sharpness_seeds), "batch": self.batch,
                "max_iters": self.max_iters, "noise_draws": self.noise_draws,
                "budget_example_grads": self.budget, "planned_example_grads": self.cost,
                "probe_example_grads": self.probe_cost, "budget_share": INIT_BUDGET}


def sharpness_cost(batch: int, iters: int) -> float:
    """Example-gradients of one sharpness measurement of ``iters`` Lanczos steps."""
    return (GRAPH_COST + HVP_COST * iters) * batch


def unbounded_plan(seeds: Sequence[int], n: int, curvature_batch: int = PROBE_BATCH,
                   sharpness: bool = True, noise: bool = True) -> InitPlan:
    """Every seed, the full batch and iteration count, every noise draw: no budget."""
    batch = min(n, curvature_batch)
    chosen = tuple(seeds) if sharpness else ()
    return InitPlan(chosen, batch, MAX_ITERS, NOISE_DRAWS if noise else 0, None,
                    len(chosen) * sharpness_cost(batch, MAX_ITERS), None, sharpness)


def plan_init(seeds: Sequence[int], n: int, probe_cost: float,
              noise_pair: tuple[int, int] | None, curvature_batch: int = PROBE_BATCH,
              sharpness: bool = True, share: float = INIT_BUDGET) -> InitPlan:
    """The plan for ``seeds`` under a budget of ``share x probe_cost`` example-gradients.

    ``probe_cost`` is ``sum(steps x batch_size)`` over the grid's probes; ``noise_pair``
    the two batch sizes of the noise scale (``None``: not measured). See the module docstring
    for the order in which the budget is spent.
    """
    budget = share * probe_cost
    draws = 0
    if noise_pair is not None:
        per_draw = float(sum(noise_pair))
        draws = min(NOISE_DRAWS, int((NOISE_SHARE if sharpness else 1.0) * budget // per_draw))
        draws = draws if draws >= MIN_NOISE_DRAWS else 0
    spent = draws * float(sum(noise_pair)) if noise_pair else 0.0
    full = min(n, curvature_batch)
    if not sharpness or not seeds:
        return InitPlan((), full, MAX_ITERS, draws, budget, spent, probe_cost, sharpness)
    left = budget - spent
    ladder = [full]
    while ladder[-1] > MIN_BATCH:
        ladder.append(max(MIN_BATCH, ladder[-1] // 2))
    for count in range(len(seeds), 0, -1):
        for batch in ladder:
            iters = int((left / count / batch - GRAPH_COST) // HVP_COST)
            if iters >= MIN_ITERS:
                iters = min(MAX_ITERS, iters)
                return InitPlan(tuple(seeds[:count]), batch, iters, draws, budget,
                                spent + count * sharpness_cost(batch, iters), probe_cost)
    batch = ladder[-1]  # nothing fits: the first seed, the smallest batch, the fewest steps
    return InitPlan((seeds[0],), batch, MIN_ITERS, draws, budget,
                    spent + sharpness_cost(batch, MIN_ITERS), probe_cost)
