"""Name the module where a NaN/Inf first appeared, by replaying the failing step with hooks.

The hot loop only learns *that* a probe went non-finite (at the next flush). To say *where*,
the probe is rolled back to its last clean snapshot, replayed up to the failing step, and
that step is run once more with hooks on every module:

* forward: the origin is the first module (in execution order) whose inputs are all finite
  but whose output is not. A child finishes before its parent, so a NaN born inside
  ``blocks.2.attn.proj`` is blamed on ``proj``, while one born in ``attn``'s own code (its
  softmax, say) is blamed on ``blocks.2.attn`` because ``proj`` saw a non-finite input;
* backward: if the forward was clean, the first module whose output gradient is finite but
  whose input gradient is not; failing that, the layer nearest the loss with a non-finite
  parameter gradient;
* update: the first layer whose parameters became non-finite after the optimizer step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from stabcheck.engine.sequential import SequentialProbe

ROOT = "<model>"
LOSS = "<loss function>"


def _finite(values: Iterable[Any]) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            return False
        if isinstance(value, tuple | list) and not _finite(value):
            return False
        if isinstance(value, dict) and not _finite(value.values()):
            return False
    return True


def locate_nonfinite(probe: SequentialProbe, snapshot: dict[str, Any], bad_step: int,
                     what: str | None) -> str | None:
    """Replay ``bad_step`` from ``snapshot`` and return the name of the origin module."""
    try:
        probe.restore(snapshot)
        for t in range(snapshot["step"], bad_step):
            probe.step(t)
        if what == "parameter":
            probe.step(bad_step)
            return _first_nonfinite_parameter(probe)
        return _hooked_step(probe, bad_step)
    except Exception:  # localisation is best effort; the divergence itself is already recorded
        return None


def _name_of(probe: SequentialProbe) -> dict[int, str]:
    return {id(m): (name or ROOT) for name, m in probe.model.named_modules()}


def _hooked_step(probe: SequentialProbe, step: int) -> str | None:
    names = _name_of(probe)
    found: list[str] = []

    def forward_hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not found and _finite(inputs) and not _finite([output]):
            found.append(names[id(module)])

    def backward_hook(module: torch.nn.Module, grad_input: Any, grad_output: Any) -> None:
        if not found and _finite(grad_output) and not _finite(grad_input):
            found.append(names[id(module)])

    handles = [m.register_forward_hook(forward_hook) for m in probe.model.modules()]
    try:
        loss = probe.forward_loss(step)
    finally:
        for h in handles:
            h.remove()
    if found:
        return found[0]
    if not bool(torch.isfinite(loss)):
        return LOSS  # every module output was finite: the loss function made it
    handles = []
    for m in probe.model.modules():
        with contextlib.suppress(Exception):
            handles.append(m.register_full_backward_hook(backward_hook))
    try:
        probe.model.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    if found:
        return found[0]
    bad_layers = [probe.layers.names[probe.layers.param_layer[i]]
                  for i, p in enumerate(probe.params)
                  if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return bad_layers[-1] if bad_layers else None


def _first_nonfinite_parameter(probe: SequentialProbe) -> str | None:
    for i, p in enumerate(probe.params):
        if not bool(torch.isfinite(p).all()):
            return probe.layers.names[probe.layers.param_layer[i]]
    return None
