"""RMSprop: preconditioned (heavy-ball with its momentum), limit ``(2 + 2 momentum) / eta`` on
the preconditioned sharpness. Its stacked update follows ``torch.optim.RMSprop``'s arithmetic
(single-tensor and foreach are the same operations): centred, momentum, weight decay."""

from __future__ import annotations

from typing import Any

import torch

from stabcheck.optimizers.spec import (
    OptimizerSpec,
    StabilityRule,
    StackedOptimizer,
    torch_defaults,
)


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


class StackedRMSprop(StackedOptimizer):
    """``torch.optim.RMSprop`` over the stacked members, operation by operation."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__()
        opts = {**torch_defaults(torch.optim.RMSprop), **kwargs}
        self.alpha = float(opts["alpha"])
        self.eps = float(opts["eps"])
        self.weight_decay = float(opts.get("weight_decay") or 0.0)
        self.momentum = float(opts.get("momentum") or 0.0)
        self.centered = bool(opts.get("centered", False))

    def update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
               neg_lr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._rmsprop(flat, grad, neg_lr, out)

    def masked_update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
                      neg_lr: torch.Tensor, out: torch.Tensor, hold: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
        return self._rmsprop(flat, grad, neg_lr, out, hold)

    def torch_state(self, state: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
        return {**state, "step": torch.tensor(float(steps), dtype=torch.float32)}

    def _moved(self, name: str, new: torch.Tensor, hold: torch.Tensor | None) -> torch.Tensor:
        """Keep ``new`` as state ``name``; a held member's row keeps its old value."""
        if hold is None:
            return new
        old = self.state[name]
        old.copy_(torch.where(hold, old, new))
        return old

    def _rmsprop(self, flat: torch.Tensor, grad: torch.Tensor, neg_lr: torch.Tensor,
                 out: torch.Tensor, hold: torch.Tensor | None = None) -> torch.Tensor:
        """With ``hold`` (``[P, 1]``), held members' state stays as it was (the base restores
        their parameters)."""
        g = grad.add_(flat, alpha=self.weight_decay) if self.weight_decay else grad
        if "square_avg" not in self.state:
            self.state["square_avg"] = torch.zeros_like(flat)
            if self.centered:
                self.state["grad_avg"] = torch.zeros_like(flat)
            if self.momentum > 0:
                self.state["momentum_buffer"] = torch.zeros_like(flat)
        live = hold is None  # without a hold, the state is updated in place
        sq = self.state["square_avg"]
        sq = self._moved("square_avg", (sq.mul_(self.alpha) if live else sq.mul(self.alpha))
                         .addcmul_(g, g, value=1 - self.alpha), hold)
        if self.centered:
            ga = self.state["grad_avg"]
            ga = self._moved("grad_avg", ga.lerp_(g, 1 - self.alpha) if live
                             else ga.lerp(g, 1 - self.alpha), hold)
            avg = sq.addcmul(ga, ga, value=-1).sqrt_()
        else:
            avg = sq.sqrt()
        avg.add_(self.eps)
        if self.momentum > 0:
            buf = self.state["momentum_buffer"]
            buf = self._moved("momentum_buffer", (buf.mul_(self.momentum) if live
                                                  else buf.mul(self.momentum))
                              .addcdiv_(g, avg), hold)
            # torch.optim: param.add_(buf, alpha=-lr)
            return torch.addcmul(flat, buf, neg_lr, out=out)
        # torch.optim: param.addcdiv_(grad, avg, value=-lr)
        return torch.addcmul(flat, g.div_(avg), neg_lr, out=out)


SPEC = OptimizerSpec(
    name="rmsprop", torch_class=torch.optim.RMSprop, stability_rule=stability_rule,
    vectorized_options=frozenset({"alpha", "eps", "weight_decay", "momentum", "centered"}),
    stacked=StackedRMSprop, second_moment=second_moment, moment_guess=moment_guess)
