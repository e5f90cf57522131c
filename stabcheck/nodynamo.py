"""Keep ``torch._dynamo`` (about a second of imports, ten on a loaded 2-core machine) off the
audit's path unless something actually compiles.

Eager ``torch.optim`` touches dynamo in two places only: methods wrapped in
``torch._disable_dynamo`` (``add_param_group``, ``zero_grad``, ``state_dict``, ...) import it to
call ``torch._dynamo.disable(fn)`` on first use, and ``step`` calls
``torch._dynamo.graph_break()`` around the update. Outside a compiled region both are no-ops
(``graph_break``'s body is empty; ``disable`` only matters while dynamo traces). The stand-in
module :func:`install` puts in ``sys.modules`` answers those two, and for anything else (a
``torch.compile`` in user code, ``torch._dynamo.config``, a submodule import) loads the real
``torch._dynamo`` on the spot, hands over to it, and forgets the pass-throughs it gave out so
that every ``_disable_dynamo`` wrapper asks the real one again.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

NAME = "torch._dynamo"
_CACHE = "__dynamo_disable"  # where torch._compile caches the disabled function
_passed: list[Callable[..., Any]] = []  # functions given back as their own "disabled" version
_real: types.ModuleType | None = None


def _load_real() -> types.ModuleType:
    global _real
    if _real is None:
        import torch

        if isinstance(sys.modules.get(NAME), _Deferred):
            del sys.modules[NAME]
        if isinstance(torch.__dict__.get("_dynamo"), _Deferred):
            del torch.__dict__["_dynamo"]
        _real = importlib.import_module(NAME)
        for fn in _passed:  # from now on the real disable, as if the stand-in never was
            if getattr(fn, _CACHE, None) is fn:
                delattr(fn, _CACHE)
        _passed.clear()
    return _real


class _Deferred(types.ModuleType):
    """``torch._dynamo`` until something needs more than eager no-ops."""

    def graph_break(self, msg: str = "") -> None:
        """A no-op outside a compiled region, which the real module would be loaded for."""
        if _real is not None:
            _real.graph_break(msg)

    def disable(self, fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
        """Eager code needs no disabling: ``fn`` itself (remembered, see :func:`_load_real`)."""
        if _real is not None or fn is None:
            return _load_real().disable(fn, recursive, **kwargs)
        _passed.append(fn)
        return fn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name != "__path__":  # a probe of sys.modules, not a use
            raise AttributeError(name)
        return getattr(_load_real(), name)


def install() -> bool:
    """Put the stand-in in place unless dynamo is already imported; True when it is in place."""
    if NAME in sys.modules:
        return isinstance(sys.modules[NAME], _Deferred)
    import torch

    stand_in = _Deferred(NAME, __doc__)
    sys.modules[NAME] = stand_in
    torch.__dict__["_dynamo"] = stand_in
    return True


def loaded() -> bool:
    """Whether the real ``torch._dynamo`` has been imported in this process."""
    module = sys.modules.get(NAME)
    return module is not None and not isinstance(module, _Deferred)
