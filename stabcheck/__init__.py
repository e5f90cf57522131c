"""stabcheck: audit the training stability of a PyTorch setup before the real run.

Public API::

    from stabcheck import audit, load_config, AuditResult
    result = audit("config.yaml")
    print(result.verdict.verdict, result.exit_code)

Heavy modules (torch) are imported on first use, so ``stabcheck --version`` stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AuditResult", "__version__", "audit", "load_config"]

if TYPE_CHECKING:
    from stabcheck.audit import audit
    from stabcheck.config import load_config
    from stabcheck.result import AuditResult


def __getattr__(name: str) -> Any:
    if name == "audit":
        from stabcheck.audit import audit
        return audit
    if name == "load_config":
        from stabcheck.config import load_config
        return load_config
    if name == "AuditResult":
        from stabcheck.result import AuditResult
        return AuditResult
    raise AttributeError(f"module 'stabcheck' has no attribute {name!r}")
