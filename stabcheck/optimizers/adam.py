"""Adam: preconditioned heavy-ball, stable while the top eigenvalue of ``P^-1/2 H P^-1/2``
stays under ``2 (1 + beta1) / ((1 - beta1) eta)``, ``P = diag(sqrt(v_hat) + eps)`` (Cohen et
al. 2022, "Adaptive gradient methods at the edge of stability")."""

from __future__ import annotations

from typing import Any

import torch

from stabcheck.optimizers.spec import (
    OptimizerSpec,
    StabilityRule,
    StackedOptimizer,
    col,
    torch_defaults,
)


def stability_rule(optimizer: torch.optim.Optimizer) -> StabilityRule:
    """Adam's (and AdamW's) limit on the preconditioned sharpness."""
    group = optimizer.param_groups[0]
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    beta1, beta2 = (float(b) for b in group["betas"])
    decoupled = isinstance(optimizer, torch.optim.AdamW) \
        or bool(group.get("decoupled_weight_decay"))
    return StabilityRule("adam", (2 + 2 * beta1) / (1 - beta1), preconditioned=True,
                         weight_decay=0.0 if decoupled else wd, eps=float(group["eps"]),
                         beta2=beta2)


def second_moment(state: dict[str, Any], rule: StabilityRule) -> torch.Tensor | None:
    """Bias-corrected ``v_hat`` (the AMSGrad maximum when kept)."""
    if "exp_avg_sq" not in state:
        return None
    step = float(state["step"])
    v = state["exp_avg_sq"]
    if "max_exp_avg_sq" in state:
        v = state["max_exp_avg_sq"]
    return v / (1 - (rule.beta2 or 0.999) ** step) if step > 0 else v


def moment_guess(grad_sq: torch.Tensor, rule: StabilityRule) -> torch.Tensor:
    """Adam's first step uses ``v_hat = g^2`` exactly."""
    return grad_sq


class StackedAdam(StackedOptimizer):
    """``torch.optim.Adam``'s (``AdamW``'s, with ``decoupled``) single-tensor arithmetic."""

    torch_class: type[torch.optim.Optimizer] = torch.optim.Adam
    decoupled_always = False

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__()
        opts = {**torch_defaults(self.torch_class), **kwargs}
        self.weight_decay = float(opts.get("weight_decay") or 0.0)
        self.decoupled = self.decoupled_always or bool(opts.get("decoupled_weight_decay",
                                                                 False))
        betas = opts.get("betas") or (0.9, 0.999)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(opts["eps"]) if opts.get("eps") is not None else 1e-8

    def update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
               neg_lr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self._adam(flat, grad, lr, out)

    def masked_update(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
                      neg_lr: torch.Tensor, out: torch.Tensor, hold: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
        return self._adam(flat, grad, lr, out, hold, count)

    def torch_state(self, state: dict[str, torch.Tensor], steps: int) -> dict[str, Any]:
        return {**state, "step": torch.tensor(float(steps), dtype=torch.float32)}

    def _adam(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
              out: torch.Tensor, hold: torch.Tensor | None = None,
              count: torch.Tensor | None = None) -> torch.Tensor:
        """With ``hold`` and ``count``, the moments of held members stay as they were and the
        bias corrections are per member."""
        g = grad
        if self.weight_decay and not self.decoupled:
            g = grad.add_(flat, alpha=self.weight_decay)
        if "exp_avg" not in self.state:
            self.state["exp_avg"] = torch.zeros_like(flat)
            self.state["exp_avg_sq"] = torch.zeros_like(flat)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        if hold is None or count is None:
            exp_avg.lerp_(g, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            bias_correction1: float | torch.Tensor = 1 - self.beta1 ** self.t
            root2: float | torch.Tensor = (1 - self.beta2 ** self.t) ** 0.5
        else:
            exp_avg.copy_(torch.where(hold, exp_avg, exp_avg.lerp(g, 1 - self.beta1)))
            moved = exp_avg_sq.mul(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            exp_avg_sq.copy_(torch.where(hold, exp_avg_sq, moved))
            t = count.to(torch.float64)
            bias_correction1 = 1 - self.beta1 ** t
            root2 = col((1 - self.beta2 ** t).sqrt())
        step_size = lr / bias_correction1
        denom = torch.sqrt(exp_avg_sq, out=g)  # the gradient is not needed any more
        denom.div_(root2).add_(self.eps)
        if self.weight_decay and self.decoupled:
            torch.mul(flat, col(1 - lr * self.weight_decay), out=out)
        else:
            out.copy_(flat)
        # torch.optim: param.addcdiv_(exp_avg, denom, value=-step_size)
        return out.sub_(torch.mul(exp_avg, col(step_size)).div_(denom))


SPEC = OptimizerSpec(
    name="adam", torch_class=torch.optim.Adam, stability_rule=stability_rule,
    vectorized_options=frozenset({"betas", "eps", "weight_decay", "decoupled_weight_decay"}),
    stacked=StackedAdam, second_moment=second_moment, moment_guess=moment_guess)
