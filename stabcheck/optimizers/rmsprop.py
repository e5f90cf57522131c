"""RMSprop: preconditioned (heavy-ball with its momentum), limit ``(2 + 2 momentum) / eta`` on
the preconditioned sharpness. No vectorized implementation: the sequential engine runs it."""

from __future__ import annotations

from typing import Any

import torch

from stabcheck.optimizers.spec import OptimizerSpec, StabilityRule


def stability_rule(optimizer: torch.optim.Optimizer) -> StabilityRule:
    """Preconditioned by ``sqrt(square_avg) + eps``."""
    group = optimizer.param_groups[0]
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    beta = float(group.get("momentum", 0.0) or 0.0)
    return StabilityRule("rmsprop", 2 + 2 * beta, preconditioned=True, weight_decay=wd,
                         eps=float(group["eps"]), beta2=float(group["alpha"]))


def second_moment(state: dict[str, Any], rule: StabilityRule) -> torch.Tensor | None:
    """``square_avg`` (centred: minus the squared mean gradient)."""
    if "square_avg" not in state:
        return None
    v_hat = state["square_avg"]
    if "grad_avg" in state:
        v_hat = v_hat - state["grad_avg"].square()
    return v_hat


def moment_guess(grad_sq: torch.Tensor, rule: StabilityRule) -> torch.Tensor:
    """RMSprop's first step uses ``v = (1 - alpha) g^2``."""
    return (1 - (rule.beta2 or 0.99)) * grad_sq


SPEC = OptimizerSpec(name="rmsprop", torch_class=torch.optim.RMSprop,
                     stability_rule=stability_rule, second_moment=second_moment,
                     moment_guess=moment_guess)
