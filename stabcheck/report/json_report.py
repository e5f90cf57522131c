"""The JSON report: the stable machine surface (``schema_version`` 1, see docs/json-report.md)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stabcheck.result import AuditResult


def _finite(value: Any) -> Any:
    # JSON has no NaN or Infinity: a non-finite number is reported as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render(result: AuditResult) -> str:
    """Pretty, key-sorted JSON with non-finite numbers as null."""
    return json.dumps(_finite(result.to_json()), indent=2, sort_keys=True, allow_nan=False) + "\n"
