"""Renderers: each turns a finished :class:`AuditResult` into one output format.

Adding a format means one new module with a ``render(result) -> str`` function and one line
in :data:`FORMATS`. Renderers only format: every number they show was computed upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stabcheck.result import AuditResult

# format name → module under stabcheck.report that defines render(result) -> str
FORMATS: dict[str, str] = {
    "json": "json_report",
    "text": "terminal",
    "rich": "terminal",
    "junit": "junit",
    "markdown": "markdown",
    "github": "github",
    "html": "html",
}


def renderer(fmt: str) -> Callable[[AuditResult], str]:
    """The ``render`` function of a format (imported lazily)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    module = import_module(f"stabcheck.report.{FORMATS[fmt]}")
    return module.render


def render(result: AuditResult, fmt: str) -> str:
    """Render ``result`` in ``fmt`` (``text`` and ``rich`` give the plain-text rendering)."""
    return renderer(fmt)(result)
