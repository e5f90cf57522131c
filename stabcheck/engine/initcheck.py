"""Before any training: one forward/backward per seed at initialisation.

What an experienced engineer checks by hand before launching a run:

* the initial loss against ln(num_classes) (a classifier should start near chance);
* the scale of each layer's output through depth (signal propagation);
* the fraction of dead ReLUs and of saturated tanh/sigmoid units;
* heavy-tailed weight initialisation (excess kurtosis of each weight matrix);
* the gradient norm of each layer at init (gradient flow through depth).

The result is plain data, journaled as one ``init`` line per seed; the detectors in
:mod:`stabcheck.diagnose.init` read it. Other before-training measurements (curvature)
add their own keys to the same per-seed report.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from stabcheck.engine.failures import describe_exception
from stabcheck.engine.instruments import LayerMap, build_model
from stabcheck.problem import Problem, TensorData
from stabcheck.records import significant

INIT_BATCH = 256  # examples used for the init checks (the whole dataset when smaller)

_RELU = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
_SATURATING = {nn.Tanh: 1.0, nn.Sigmoid: 1.0, nn.Hardtanh: 1.0}


def init_batch_index(seed: int, n: int, device: torch.device) -> torch.Tensor:
    """The fixed examples the init checks look at: the same for a seed on every run."""
    gen = torch.Generator().manual_seed(10_007 + seed)
    return torch.randperm(n, generator=gen)[: min(n, INIT_BATCH)].to(device)


def _kurtosis(weight: torch.Tensor) -> float:
    """Excess kurtosis of a weight tensor's entries (0 for a Gaussian)."""
    w = weight.detach().double().flatten()
    if w.numel() < 8:
        return 0.0
    centred = w - w.mean()
    var = centred.square().mean()
    if var <= 0:
        return 0.0
    return float(centred.pow(4).mean() / var.square() - 3.0)


def initial_checks(problem: Problem, seed: int, data: TensorData) -> dict[str, Any]:
    """The before-training report of one seed; ``{"error": ...}`` when user code fails.

    A model that cannot run one forward/backward here will fail its probes too, where the
    failure is reported per probe; the init report only notes it.
    """
    try:
        return _initial_checks(problem, seed, data)
    except Exception as exc:
        return {"error": describe_exception(exc)}


def _initial_checks(problem: Problem, seed: int, data: TensorData) -> dict[str, Any]:
    model = build_model(problem, seed)
    batch = data.batch(init_batch_index(seed, data.n, problem.device))

    outputs: dict[str, dict[str, Any]] = {}
    activations: dict[str, dict[str, Any]] = {}
    handles = []

    def watch(name: str, module: nn.Module) -> None:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                return
            o = out.detach().float()
            if isinstance(module, _RELU):
                # A unit is dead when it is zero for every example in the batch.
                flat = o.reshape(o.shape[0], -1) if o.dim() > 1 else o.reshape(1, -1)
                dead = (flat <= 0).all(dim=0).float().mean()
                activations[name] = {"kind": type(module).__name__,
                                     "dead_fraction": significant(float(dead))}
            elif type(module) in _SATURATING:
                if isinstance(module, nn.Sigmoid):
                    sat = ((o < 0.01) | (o > 0.99)).float().mean()
                else:
                    sat = (o.abs() > 0.99).float().mean()
                activations[name] = {"kind": type(module).__name__,
                                     "saturated_fraction": significant(float(sat))}
            elif next(module.parameters(recurse=False), None) is not None:
                outputs[name] = {"output_rms": significant(float(o.square().mean().sqrt()))}
        handles.append(module.register_forward_hook(hook))

    for name, module in model.named_modules():
        if name:
            watch(name, module)
    try:
        loss = problem.loss_fn(model, batch).float()
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layer_map = LayerMap.from_names(n for n, _ in named)
    modules = dict(model.named_modules())
    layers: list[dict[str, Any]] = []
    for li, layer in enumerate(layer_map.names):
        params = [p for (_, p), owner in zip(named, layer_map.param_layer, strict=True)
                  if owner == li]
        weights = [p for p in params if p.dim() >= 2]
        grad_sq = sum(float(p.grad.detach().double().square().sum())
                      for p in params if p.grad is not None)
        module = modules.get(layer)
        entry: dict[str, Any] = {
            "name": layer, "size": sum(p.numel() for p in params),
            "kind": type(module).__name__ if module is not None else "Parameter",
            "grad_norm": significant(math.sqrt(grad_sq)),
            "weight_kurtosis": significant(_kurtosis(weights[0])) if weights else None,
        }
        entry.update(outputs.get(layer, {}))
        layers.append(entry)
    return {
        "initial_loss": significant(float(loss.detach())),
        "num_classes": problem.num_classes,
        "loss": problem.loss_name,
        "batch": int(min(data.n, INIT_BATCH)),
        "layers": layers,
        "activations": [{"name": n, **a} for n, a in activations.items()],
    }
