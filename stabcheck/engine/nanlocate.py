"""Name the module where a NaN/Inf first appeared, by replaying the failing step with hooks.

The hot loop only learns *that* a probe went non-finite (at the next flush). To say *where*,
the probe is rolled back to its last clean snapshot, replayed up to the failing step, and
that step is run once more with hooks on every module:

* forward: the origin is the first module (in execution order) whose inputs are all finite
  but whose output is not. A child finishes before its parent, so a NaN born inside
  ``blocks.2.attn.proj`` is blamed on ``proj``, while one born in ``attn``'s own code (its
  softmax, say) is blamed on ``blocks.2.attn`` because ``proj`` saw a non-finite input;
* backward: if the forward was clean, the first module whose output gradient is finite but
  whose input gradient is not (its hooks are registered *before* a second forward, or they
  would never fire), followed by the autograd op and the forward source line, as
  ``torch.autograd.detect_anomaly`` names them (``norm (SqrtBackward0 at net.py:9: ...)``);
  failing that, the layer nearest the loss with a non-finite parameter gradient;
* update: the first layer whose parameters became non-finite after the optimizer step.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
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
    rng = torch.get_rng_state()  # each replayed forward draws the same dropout masks

    def forward_hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not found and _finite(inputs) and not _finite([output]):
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
    # The forward was clean: the NaN is born in the backward pass (``sqrt`` at 0 inside a
    # normalisation layer, say). Full backward hooks only fire for outputs produced *after*
    # they were registered (they wrap the module's outputs in the forward), so the forward is
    # run again with them in place. A module whose forward modifies a hooked output in place
    # refuses them; that replay then falls back to the parameter gradients below.
    module = _backward_origin(probe, step, names, rng)
    where = _anomaly_site(probe, step, rng)
    if module is None:
        bad_layers = [probe.layers.names[probe.layers.param_layer[i]]
                      for i, p in enumerate(probe.params)
                      if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        module = bad_layers[-1] if bad_layers else None
    if module is not None and where is not None:
        return f"{module} ({where})"
    return module


def _backward_origin(probe: SequentialProbe, step: int, names: dict[int, str],
                     rng: torch.Tensor) -> str | None:
    """The first module, in backward order, whose output gradient is finite but whose input
    gradient is not (a child's hook fires before its parent's)."""
    found: list[str] = []

    def backward_hook(module: torch.nn.Module, grad_input: Any, grad_output: Any) -> None:
        if not found and _finite(grad_output) and not _finite(grad_input):
            found.append(names[id(module)])

    handles = []
    for m in probe.model.modules():
        with contextlib.suppress(Exception):
            handles.append(m.register_full_backward_hook(backward_hook))
    refused = False
    # (the first layer's hook warns that no input requires a gradient: expected here)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            torch.set_rng_state(rng)
            probe.model.zero_grad(set_to_none=True)
            probe.forward_loss(step).backward()
        except RuntimeError:
            refused = True  # an in-place op on a hooked output refused the hooks
        finally:
            for h in handles:
                h.remove()
    if refused:  # plain replay, for the parameter-gradient fallback
        torch.set_rng_state(rng)
        probe.model.zero_grad(set_to_none=True)
        probe.forward_loss(step).backward()
    return found[0] if found else None


def _anomaly_site(probe: SequentialProbe, step: int, rng: torch.Tensor) -> str | None:
    """The autograd op and the forward source line that made the first non-finite gradient,
    as ``torch.autograd.detect_anomaly`` reports them: ``SqrtBackward0 at net.py:12``."""
    torch.set_rng_state(rng)
    grads = [None if p.grad is None else p.grad.clone() for p in probe.params]
    op = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly(check_nan=True):
                probe.forward_loss(step).backward()
        except RuntimeError as exc:
            match = re.search(r"Function '(\w+)' returned nan", str(exc))
            op = match.group(1) if match else None
    for p, g in zip(probe.params, grads, strict=True):
        p.grad = g  # leave the gradients of the hooked replay in place
    if op is None:
        return None
    trace = "".join(str(w.message) for w in caught if "Traceback of forward call" in
                    str(w.message))
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', trace)
    user = [f for f in frames if "/torch/" not in f[0] and "/stabcheck/" not in f[0]]
    if not user:
        return op
    file, line, code = user[-1]
    return f"{op} at {os.path.basename(file)}:{line}: {code.strip()}"


def _first_nonfinite_parameter(probe: SequentialProbe) -> str | None:
    for i, p in enumerate(probe.params):
        if not bool(torch.isfinite(p).all()):
            return probe.layers.names[probe.layers.param_layer[i]]
    return None
