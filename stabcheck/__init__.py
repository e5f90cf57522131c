"""stabcheck: audit the training stability of a PyTorch setup before the real run.

Public API (see ``docs/python-api.md``)::

    import stabcheck
    result = stabcheck.audit("config.yaml", steps=50, batch_size=64)
    print(result.verdict, result.exit_code, result.max_stable_lr)
    result.assert_stable(max_lr_at_least=3e-4, at_batch_size=64)

``stabcheck.audit`` is callable however it is imported (``from stabcheck import audit``
gives the submodule, which calls :func:`stabcheck.audit.audit`). Mistakes raise
:class:`ConfigError` (``exit_code`` 2) or :class:`UserCodeError` (3) with the CLI's one-line
messages. Heavy modules (torch) are imported on first use, so ``stabcheck --version`` stays
instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stabcheck.errors import ConfigError, StabcheckError, UserCodeError

__version__ = "0.1.0"
__all__ = ["AuditResult", "ConfigError", "ProbeResult", "StabcheckError",
           "StabilityAssertionError", "UserCodeError", "__version__", "audit", "load_config"]

if TYPE_CHECKING:
    from stabcheck.api import AuditResult, ProbeResult, StabilityAssertionError
    from stabcheck.audit import audit
    from stabcheck.config import load_config

_LAZY = {"AuditResult": "stabcheck.api", "ProbeResult": "stabcheck.api",
         "StabilityAssertionError": "stabcheck.api", "load_config": "stabcheck.config",
         "audit": "stabcheck.audit"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        module = import_module(_LAZY[name])
        # ``audit`` is the (callable) submodule itself: importing it put it on the package.
        return module if name == "audit" else getattr(module, name)
    raise AttributeError(f"module 'stabcheck' has no attribute {name!r}")
