"""The optimizer registry: every built-in optimizer is one spec in one file of this package.

Config validation, the vectorized engine's eligibility check and its stacked update, and the
curvature measurement's stability limit and preconditioner all ask the registry. Adding an
optimizer is one file (a module with ``SPEC = OptimizerSpec(...)``) and one line below.

Listing the names imports nothing (config validation runs before torch is imported); the
spec's module is imported when it is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stabcheck.registry import Registry

if TYPE_CHECKING:
    import torch

    from stabcheck.optimizers.spec import OptimizerSpec

# name in the config → the module holding its spec.
OPTIMIZERS = Registry("optimizer", {
    "sgd": "stabcheck.optimizers.sgd:SPEC",
    "adam": "stabcheck.optimizers.adam:SPEC",
    "adamw": "stabcheck.optimizers.adamw:SPEC",
    "rmsprop": "stabcheck.optimizers.rmsprop:SPEC",
})
BUILTIN_OPTIMIZERS = tuple(OPTIMIZERS)


def get(name: str) -> OptimizerSpec:
    """The spec of built-in optimizer ``name``; :class:`~stabcheck.registry.UnknownName` (a
    ``KeyError`` and a ``ValueError``) for any other name."""
    spec: OptimizerSpec = OPTIMIZERS.load(name)
    return spec


def spec_of(optimizer: torch.optim.Optimizer) -> OptimizerSpec | None:
    """The spec whose torch class ``optimizer`` is an instance of (subclasses included); the
    most derived one when several match (AdamW is also an Adam)."""
    matches = [get(name) for name in OPTIMIZERS]
    matches = [spec for spec in matches if isinstance(optimizer, spec.torch_class)]
    return max(matches, key=lambda spec: len(spec.torch_class.__mro__), default=None)
