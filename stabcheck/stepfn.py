"""A user's own training step (``step: "./train.py:train_step"``): its contract and helpers.

The step is called once per stabcheck step as ``train_step(model, batch, optimizers, ctx)``:

* ``model`` — the probe's model (train mode, on the device);
* ``batch`` — this step's batch (a tuple or dict of tensors, as for a plain loss);
* ``optimizers`` — a dict of optimizers built from the ``optimizer:`` section at the swept
  learning rate: ``{"model": opt}`` by default, or one per entry of ``step_optimizers``
  (a name → a submodule of the model, e.g. ``{generator: gen, discriminator: disc}``);
* ``ctx`` — a :class:`StepContext` (the step index, the learning rate, an autocast helper).

It does its own ``zero_grad``/``backward``/``optimizer.step()`` and returns the loss: a scalar
tensor, or a dict of scalar tensors (the ``loss`` entry, else their sum, is the probe's loss).
Each ``optimizer.step()`` is measured by hooks: the gradient norm of that optimizer's
parameters before clipping, ``probe.grad_clip`` applied to them, the update ratio. This
module imports nothing from the engines, so the problem builder can use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

StepFn = Callable[..., Any]
DEFAULT_GROUP = "model"


class StepReturnError(ValueError):
    """The training step returned something that is not a loss."""


@dataclass
class StepContext:
    """What a training step may know besides its arguments."""

    step: int
    lr: float
    device: torch.device
    dtype: str = "float32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast at ``probe.dtype`` (a no-op for float32); the step runs inside it already,
        this is for steps that leave it on purpose."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.dtype == "bfloat16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def losses_of(result: Any) -> dict[str, torch.Tensor]:
    """The step's return value as named scalar losses (raises :class:`StepReturnError`)."""
    expected = ("expected a scalar loss tensor or a dict of them (name -> tensor); return "
                "e.g. loss.detach() or {'d_loss': d, 'g_loss': g}")
    if isinstance(result, torch.Tensor):
        result = {"loss": result}
    if not isinstance(result, Mapping) or not result:
        raise StepReturnError(f"the training step returned {describe(result)}; {expected}")
    losses: dict[str, torch.Tensor] = {}
    for name, value in result.items():
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise StepReturnError(f"the training step returned {describe(value)} for "
                                  f"{name!r}; {expected}")
        losses[str(name)] = value.detach().float().reshape(())
    return losses


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The probe's loss: the ``loss`` entry, else the sum of all."""
    if "loss" in losses:
        return losses["loss"]
    return torch.stack(list(losses.values())).sum()


def parameter_groups(model: nn.Module, groups: Mapping[str, str]
                     ) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters per optimizer name: ``groups`` maps a name to a submodule path
    (``""`` is the whole model); empty ``groups`` is one optimizer ``model`` over all."""
    if not groups:
        return {DEFAULT_GROUP: [p for p in model.parameters() if p.requires_grad]}
    out: dict[str, list[nn.Parameter]] = {}
    seen: dict[int, str] = {}
    for name, path in groups.items():
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            children = ", ".join(n for n, _ in model.named_children()) or "none"
            raise ValueError(f"optimizer {name!r}: the model has no submodule {path!r} "
                             f"(its children: {children})") from None
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"optimizer {name!r}: submodule {path!r} has no trainable "
                             "parameters")
        for p in params:
            if id(p) in seen:
                raise ValueError(f"optimizers {seen[id(p)]!r} and {name!r} share parameters "
                                 f"(submodule {path!r}); give each its own submodule")
            seen[id(p)] = name
        out[name] = params
    return out


def build_optimizers(model: nn.Module, groups: Mapping[str, str],
                     make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer],
                     lr: float) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per group, built from the config at learning rate ``lr``."""
    return {name: make_optimizer(params, lr)
            for name, params in parameter_groups(model, groups).items()}


def dry_loss_fn(step_fn: StepFn, groups: Mapping[str, str],
                make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
                ) -> Callable[[nn.Module, Any], torch.Tensor]:
    """A plain ``loss_fn(model, batch)`` for the checks made before training (the trial
    batch, the init report): the user's step run once with optimizers whose ``step()`` does
    nothing. The gradients its own backward left are kept; the returned loss is a detached
    leaf, so a caller's ``loss.backward()`` adds nothing to them."""

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        optimizers = build_optimizers(model, groups, make_optimizer, 0.0)
        for opt in optimizers.values():
            opt.step = _no_step  # type: ignore[method-assign,assignment]
        device = next(iter(model.parameters()), torch.zeros(())).device
        result = step_fn(model, batch, optimizers, StepContext(0, 0.0, device))
        return total_loss(losses_of(result)).clone().requires_grad_()

    return loss_fn


def _no_step(closure: Any = None) -> None:
    return None
