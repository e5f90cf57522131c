"""What the registry knows about one optimizer: :class:`OptimizerSpec`, the edge of stability
it implies (:class:`StabilityRule`), and the base of its stacked (vectorized) update."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Keywords that only choose an implementation, not the arithmetic: any optimizer accepts them
# on the vectorized path.
IMPLEMENTATION_OPTIONS = frozenset({"foreach"})


@dataclass(frozen=True)
class StabilityRule:
    """An optimizer's edge of stability: ``limit(lr) = constant / lr`` on some sharpness.

    ``preconditioned`` says the sharpness is that of ``P^-1/2 H P^-1/2`` (adaptive methods).
    """

    kind: str  # gd | heavy_ball | nesterov | adam | rmsprop | unknown
    constant: float | None
    preconditioned: bool = False
    weight_decay: float = 0.0  # coupled L2: adds weight_decay to H
    eps: float = 0.0
    beta2: float | None = None  # Adam's second-moment decay (or RMSprop's alpha)

    def limit(self, lr: float) -> float | None:
        """The largest sharpness at which a step of size ``lr`` is still stable."""
        return self.constant / lr if self.constant is not None and lr > 0 else None

    def ceiling(self, sharpness: float | None) -> float | None:
        """The largest stable learning rate for this sharpness."""
        if self.constant is None or sharpness is None or not math.isfinite(sharpness) \
                or sharpness <= 0:
            return None
        return self.constant / sharpness

    @property
    def formula(self) -> str:
        """The limit, as a person reads it."""
        return {"gd": "2/eta on lambda_max",
                "heavy_ball": "(2+2*beta)/((1-dampening)*eta) on lambda_max",
                "nesterov": "(2+2*beta)/((1+2*beta)*eta) on lambda_max",
                "adam": "(2+2*beta1)/((1-beta1)*eta) on lambda_max(P^-1/2 H P^-1/2)",
                "rmsprop": "(2+2*momentum)/eta on lambda_max(P^-1/2 H P^-1/2)",
                }.get(self.kind, "unknown for this optimizer")


UNKNOWN_RULE = StabilityRule("unknown", None)


def torch_defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of a torch optimizer class."""
    return {k: p.default for k, p in inspect.signature(cls).parameters.items()}


def col(values: torch.Tensor) -> torch.Tensor:
    """``[P]`` → ``[P, 1]`` float32, to broadcast over the flat ``[P, N]`` parameters."""
    return values.to(torch.float32).unsqueeze(1)


class StackedOptimizer:
    """An optimizer over a flat ``[P, N]`` parameter tensor, one learning rate per row.

    Subclasses follow ``torch.optim``'s single-tensor arithmetic operation by operation; only
    the learning rate (which the sweep varies) is a per-member tensor. The other
    hyperparameters come from the one ``optimizer:`` section and are shared. This base keeps
    the state (per-member rows), the step count, snapshots, and the hand-over of one member's
    state to a real torch optimizer.
    """

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}
        self.t = 0  # optimizer steps taken (Adam's bias correction)
        # With loss scaling, members skip steps on their own: steps taken per member.
        self.count: torch.Tensor | None = None

    def update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
               neg_lr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Every member steps (``self.t`` already counts this step)."""
        raise NotImplementedError

    def masked_update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
                      neg_lr: torch.Tensor, out: torch.Tensor, hold: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
        """Members in ``hold`` (``[P, 1]``) keep their state; ``count`` is each member's
        step number. The base restores held members' parameters afterwards."""
        raise NotImplementedError

    def torch_state(self, state: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
        """One parameter's state as the torch optimizer keeps it, after ``steps`` steps."""
        return state

    def step(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
             neg_lr: torch.Tensor, out: torch.Tensor,
             skip: torch.Tensor | None = None) -> torch.Tensor:
        """Write the updated parameters into ``out`` and return it. ``lr`` is ``[P]``
        float64; ``neg_lr`` is ``-lr`` as a float32 ``[P, 1]`` column. ``grad`` is consumed
        (updated in place). Large outputs go into reused buffers: a fresh multi-megabyte
        allocation per step costs page faults that can double the cost of the update.

        ``skip`` (``[P]`` bool, float16 loss scaling) marks members whose step is skipped:
        their parameters and optimizer state stay as they were, as when ``GradScaler`` skips
        ``optimizer.step()``.
        """
        if skip is None:
            self.t += 1
            return self.update(flat, grad, lr, neg_lr, out)
        if self.count is None:
            self.count = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
        hold = skip.unsqueeze(-1)
        count = self.count + 1  # this step's number, for the members that take it
        new = self.masked_update(flat, grad, lr, neg_lr, out, hold, count)
        self.count = torch.where(skip, self.count, count)
        return new.copy_(torch.where(hold, flat, new))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the state, to rebuild one member's torch optimizer later."""
        return {"t": self.t, "state": {k: v.clone() for k, v in self.state.items()},
                "count": self.count.clone() if self.count is not None else None}

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every member not in ``rows``."""
        self.state = {k: v[rows] for k, v in self.state.items()}
        if self.count is not None:
            self.count = self.count[rows]

    def load_into(self, optimizer: torch.optim.Optimizer, snap: dict[str, Any], member: int,
                  slices: dict[str, tuple[int, int]], named: dict[str, nn.Parameter]) -> None:
        """Give a real torch optimizer the state of one member at ``snap``."""
        steps = snap["t"] if snap.get("count") is None else int(snap["count"][member])
        if steps == 0:
            return
        for name, (lo, hi) in slices.items():
            param = named[name]
            state = {k: v[member, lo:hi].view_as(param).clone().to(param.device)
                     for k, v in snap["state"].items()}
            optimizer.state[param] = self.torch_state(state, steps)


# The optimizer's second-moment estimate v_hat for one parameter, from its torch state (None
# before its first step); and v_hat from a mean squared gradient, standing in before then.
SecondMoment = Callable[[dict[str, Any], StabilityRule], torch.Tensor | None]
MomentGuess = Callable[[torch.Tensor, StabilityRule], torch.Tensor]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer, everything stabcheck needs of it in one place.

    * ``torch_class`` — what ``optimizer: {name: ...}`` builds;
    * ``vectorized_options`` — the keywords the stacked update implements (any other keyword
      must keep its default for the vectorized engine to run it); ``stacked`` builds that
      update from the ``optimizer.kwargs`` (``None``: no vectorized implementation);
    * ``stability_rule`` — the edge of stability of a built optimizer (curvature limits);
    * ``second_moment`` / ``moment_guess`` — the preconditioner ``P = sqrt(v_hat) + eps`` of
      adaptive methods (``None`` for the others).
    """

    name: str
    torch_class: type[torch.optim.Optimizer]
    stability_rule: Callable[[torch.optim.Optimizer], StabilityRule]
    vectorized_options: frozenset[str] = field(default_factory=frozenset)
    stacked: Callable[[dict[str, Any]], StackedOptimizer] | None = None
    second_moment: SecondMoment | None = None
    moment_guess: MomentGuess | None = None

    def unsupported_option(self, kwargs: dict[str, Any]) -> str | None:
        """The first ``key=value`` the stacked update does not implement, or ``None``."""
        if self.stacked is None:
            return None
        defaults = torch_defaults(self.torch_class)
        for key, value in kwargs.items():
            if key in self.vectorized_options or key in IMPLEMENTATION_OPTIONS:
                continue
            if key in defaults and defaults[key] == value:
                continue
            return f"{key}={value!r}"
        return None
