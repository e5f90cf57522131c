"""How a cohort's members share one module: their parameters laid out side by side in one
flat ``[P, N]`` tensor (:class:`Layout`), and the module run with a member's tensors swapped
in for its own (:class:`Swap`, :class:`Bound`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stabcheck.engine.instruments import LayerMap


class Swap:
    """Run a module with other tensors in place of its parameters and buffers.

    What ``torch.func.functional_call`` does, minus its per-call bookkeeping (which costs
    more than a tiny model's forward): the slots every tensor occupies — several, for tied
    weights — are found once, then each call swaps the tensors in and back out.

    An :class:`~torch.nn.Embedding` with a ``padding_idx`` runs without it, on its weight
    with the padding row's gradient blocked (the same forward and backward, in that slot
    only, so a tied output layer still trains the row): ``vmap``'s batching rule for
    ``embedding`` offsets each member's indices into one stacked table but leaves
    ``padding_idx`` as is, so every member but the first would train its padding row (with
    Hugging Face's zero-initialised padding rows under RMSNorm: 100x gradient norms).
    """

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        canonical: dict[int, str] = {}
        for name, t in [*base.named_parameters(), *base.named_buffers()]:
            canonical.setdefault(id(t), name)
        # name -> its slots: (the module's tensor dict, attribute, the padded Embedding or None)
        self.slots: dict[str, list[tuple[dict[str, Any], str, nn.Embedding | None]]] = {}
        for kind in ("_parameters", "_buffers"):
            for _, module in base.named_modules(remove_duplicate=False):
                for attr, t in getattr(module, kind).items():
                    if t is None or id(t) not in canonical:
                        continue
                    padded = module if (kind == "_parameters" and attr == "weight"
                                        and isinstance(module, nn.Embedding)
                                        and module.padding_idx is not None) else None
                    self.slots.setdefault(canonical[id(t)], []).append(
                        (getattr(module, kind), attr, padded))
        self._masks: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _unpadded(self, module: nn.Embedding, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` unchanged in value, with no gradient into ``module``'s padding row."""
        key = (id(module), weight.device)
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.zeros(module.num_embeddings, 1, dtype=torch.bool, device=weight.device)
            mask[module.padding_idx] = True
            self._masks[key] = mask
        return torch.where(mask, weight.detach(), weight)

    def call(self, tensors: dict[str, torch.Tensor], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        saved: list[tuple[dict[str, Any], str, Any]] = []
        padded: list[tuple[nn.Embedding, int | None]] = []
        try:
            for name, value in tensors.items():
                for store, attr, module in self.slots[name]:
                    saved.append((store, attr, store[attr]))
                    if module is not None:
                        padded.append((module, module.padding_idx))
                        store[attr] = self._unpadded(module, value)
                        module.padding_idx = None
                    else:
                        store[attr] = value
            return self.base(*args, **kwargs)
        finally:
            for store, attr, original in reversed(saved):
                store[attr] = original
            for module, row in reversed(padded):
                module.padding_idx = row


class Bound:
    """``module(*args)`` with one member's parameters (see :class:`Swap`)."""

    def __init__(self, swap: Swap, tensors: dict[str, torch.Tensor]) -> None:
        self.swap, self.tensors = swap, tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.swap.call(self.tensors, args, kwargs)

    def __getattr__(self, name: str) -> Any:  # e.g. a loss that reads model.num_classes
        return getattr(self.swap.base, name)


@dataclass(frozen=True)
class Layout:
    """Where each trainable parameter lives in the flat ``[P, N]`` tensor."""

    names: tuple[str, ...]          # flat order: grouped by layer
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]
    layers: LayerMap                # in the model's own parameter order (as sequential)
    layer_sizes: tuple[int, ...]    # elements per layer, in layers.names order

    @classmethod
    def of(cls, model: nn.Module) -> Layout:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        layers = LayerMap.from_names(n for n, _ in named)
        order = sorted(range(len(named)), key=lambda i: (layers.param_layer[i], i))
        names = tuple(named[i][0] for i in order)
        shapes = tuple(named[i][1].shape for i in order)
        sizes = tuple(int(named[i][1].numel()) for i in order)
        layer_sizes = [0] * len(layers.names)
        for i, (_, p) in enumerate(named):
            layer_sizes[layers.param_layer[i]] += int(p.numel())
        return cls(names, shapes, sizes, layers, tuple(layer_sizes))

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def slices(self) -> dict[str, tuple[int, int]]:
        out, lo = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = (lo, lo + size)
            lo += size
        return out


def tensor_of(model: nn.Module, name: str) -> torch.Tensor:
    value = model.get_parameter(name) if name in dict(model.named_parameters()) \
        else model.get_buffer(name)
    return value
