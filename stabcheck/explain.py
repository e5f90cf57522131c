"""``stabcheck explain``: the theory, source, default threshold and advice behind each code."""

from __future__ import annotations

import difflib
import textwrap

import stabcheck.diagnose  # noqa: F401  (importing the detectors registers every code)
from stabcheck.errors import ConfigError
from stabcheck.findings import REGISTRY
from stabcheck.thresholds import Thresholds

BACKGROUND = "Theory: docs/theory.md in the stabcheck repository."


def list_codes() -> str:
    """One line per registered code."""
    lines = ["code   severity  name                      title"]
    for code in sorted(REGISTRY):
        info = REGISTRY[code]
        lines.append(f"{code:<6} {info.severity.value:<9} {info.name:<25} {info.title}")
    lines.append("")
    lines.append("stabcheck explain CODE prints the theory, source and default threshold.")
    return "\n".join(lines)


def describe_code(code: str) -> str:
    """The long explanation of one code (by code or by name)."""
    key = code.strip().upper()
    by_name = {info.name: c for c, info in REGISTRY.items()}
    key = by_name.get(code.strip().lower(), key)
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, list(REGISTRY) + list(by_name), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown finding code {code!r}{hint}; `stabcheck explain` lists them")
    info = REGISTRY[key]
    wrap = textwrap.TextWrapper(width=88, initial_indent="  ", subsequent_indent="  ")
    out = [f"{info.code} {info.name} — {info.title}",
           f"severity: {info.severity.value}   family: {info.family}", "",
           "What it means:", wrap.fill(info.explanation), "",
           "Source:", wrap.fill(info.source)]
    if info.thresholds:
        out += ["", "Thresholds (set under `thresholds:` in the config):"]
        fields = Thresholds.model_fields
        defaults = Thresholds()
        for name in info.thresholds:
            desc = fields[name].description or ""
            out.append(wrap.fill(f"{name} = {getattr(defaults, name)!r}: {desc}"))
    out += ["", "What to do:", wrap.fill(info.recommendation)]
    if info.config_key:
        out.append(f"  (relevant config key: {info.config_key})")
    out += ["", BACKGROUND]
    return "\n".join(out)
