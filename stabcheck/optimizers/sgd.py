"""SGD (momentum, dampening, Nesterov, weight decay): gradient descent is stable while
``eta < 2 / lambda_max``, heavy-ball momentum ``beta`` raises that to ``(2 + 2 beta) / eta``
(Cohen et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch

from stabcheck.optimizers.spec import OptimizerSpec, StabilityRule, StackedOptimizer, torch_defaults


def stability_rule(optimizer: torch.optim.Optimizer) -> StabilityRule:
    """GD, heavy-ball or Nesterov, by the momentum settings."""
    group = optimizer.param_groups[0]
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    beta = float(group.get("momentum", 0.0) or 0.0)
    if beta == 0.0:
        return StabilityRule("gd", 2.0, weight_decay=wd)
    if group.get("nesterov"):
        return StabilityRule("nesterov", (2 + 2 * beta) / (1 + 2 * beta), weight_decay=wd)
    damp = float(group.get("dampening", 0.0) or 0.0)
    constant = (2 + 2 * beta) / (1 - damp) if damp < 1 else None
    return StabilityRule("heavy_ball", constant, weight_decay=wd)


class StackedSGD(StackedOptimizer):
    """``torch.optim.SGD``'s single-tensor arithmetic over the stacked members."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__()
        opts = {**torch_defaults(torch.optim.SGD), **kwargs}
        self.weight_decay = float(opts.get("weight_decay") or 0.0)
        self.momentum = float(opts.get("momentum") or 0.0)
        self.dampening = float(opts.get("dampening") or 0.0)
        self.nesterov = bool(opts.get("nesterov", False))

    def update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
               neg_lr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        g = grad.add_(flat, alpha=self.weight_decay) if self.weight_decay else grad
        if self.momentum:
            buf = self.state.get("momentum_buffer")
            if buf is None:
                buf = g.detach().clone()
                self.state["momentum_buffer"] = buf
            else:
                buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
            g = g.add_(buf, alpha=self.momentum) if self.nesterov else buf
        return torch.addcmul(flat, g, neg_lr, out=out)

    def masked_update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
                      neg_lr: torch.Tensor, out: torch.Tensor, hold: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
        g = grad.add_(flat, alpha=self.weight_decay) if self.weight_decay else grad
        if self.momentum:
            buf = self.state.get("momentum_buffer")
            if buf is None:
                buf = torch.zeros_like(flat)
                self.state["momentum_buffer"] = buf
            moved = torch.add(buf.mul(self.momentum), g, alpha=1 - self.dampening)
            moved = torch.where((count == 1).unsqueeze(-1), g, moved)  # first: a copy
            buf.copy_(torch.where(hold, buf, moved))
            g = g.add_(buf, alpha=self.momentum) if self.nesterov else buf
        return torch.addcmul(flat, g, neg_lr, out=out)


SPEC = OptimizerSpec(
    name="sgd", torch_class=torch.optim.SGD, stability_rule=stability_rule,
    vectorized_options=frozenset({"momentum", "dampening", "nesterov", "weight_decay"}),
    stacked=StackedSGD)
