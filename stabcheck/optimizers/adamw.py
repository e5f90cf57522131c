"""AdamW: Adam with decoupled weight decay (the decay does not enter the curvature)."""

from __future__ import annotations

import torch

from stabcheck.optimizers.adam import StackedAdam, moment_guess, second_moment, stability_rule
from stabcheck.optimizers.spec import OptimizerSpec


class StackedAdamW(StackedAdam):
    """``torch.optim.AdamW``: Adam's arithmetic, weight decay always decoupled."""

    torch_class = torch.optim.AdamW
    decoupled_always = True


SPEC = OptimizerSpec(
    name="adamw", torch_class=torch.optim.AdamW, stability_rule=stability_rule,
    vectorized_options=frozenset({"betas", "eps", "weight_decay"}),
    stacked=StackedAdamW, second_moment=second_moment, moment_guess=moment_guess)
