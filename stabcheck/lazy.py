"""Registries name their entries by ``"module:attr"`` so that listing the names (the CLI's
``--engine``/``--executor`` choices, config validation) imports nothing heavy; the entry's
module is imported only when the entry is used."""

from __future__ import annotations

import importlib
from typing import Any


def load(ref: str) -> Any:
    """The object ``"package.module:attr"`` names (imported now)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
