"""GitHub Actions workflow commands: ``::error`` / ``::warning`` annotations on the config.

At most :data:`MAX_PER_LEVEL` of each level (GitHub shows only the first ten per step
anyway), pointing at the config file and the line of the key a finding is about, escaped as
GitHub's toolkit escapes them (``actions/toolkit``, ``command.ts``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stabcheck.findings import Finding
    from stabcheck.result import AuditResult

MAX_PER_LEVEL = 10
_LEVEL = {"error": "error", "warning": "warning"}


def escape_data(text: str) -> str:
    """The message part of a workflow command: ``%``, CR and LF are percent-encoded."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A property value (file, title): also ``:`` and ``,``, which delimit properties."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation_path(config_path: str) -> str:
    """The config's path as GitHub wants it: relative to the workspace when possible."""
    path = Path(config_path)
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace:
        try:
            return path.resolve().relative_to(Path(workspace).resolve()).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def key_line(config_path: str, key: str | None) -> int | None:
    """The line of ``key`` (dotted, e.g. ``probe.grad_clip``) in the config file, or of its
    nearest parent that is written there; None when the file cannot be read."""
    from stabcheck import yamlsafe
    from stabcheck.errors import ConfigError

    try:
        _, source = yamlsafe.load(Path(config_path))
    except (ConfigError, OSError):
        return None
    parts = tuple(key.split(".")) if key else ()
    return source.locate(parts, prefer_key=True).line


def annotation(finding: Finding, file: str, line: int | None) -> str:
    """One ``::error file=…,line=…,title=…::message`` command."""
    props = [f"file={escape_property(file)}"]
    if line is not None:
        props.append(f"line={line}")
    props.append(f"title={escape_property(f'{finding.code} {finding.title}')}")
    message = finding.message
    if finding.recommendation:
        message += f"\n{finding.recommendation}"
    return f"::{_LEVEL[finding.severity.value]} {','.join(props)}::{escape_data(message)}"


def render(result: AuditResult) -> str:
    """Annotation lines for the error and warning findings, most severe first."""
    file = annotation_path(result.config_path)
    lines: dict[str, int | None] = {}
    out: list[str] = []
    left_out = 0
    for level in ("error", "warning"):
        found = [f for f in result.diagnosis.findings if f.severity.value == level]
        for f in found[:MAX_PER_LEVEL]:
            key = f.config_key or ""
            if key not in lines:
                lines[key] = key_line(result.config_path, f.config_key)
            out.append(annotation(f, file, lines[key]))
        left_out += max(0, len(found) - MAX_PER_LEVEL)
    if left_out:
        out.append(f"stabcheck: {left_out} more finding(s) not annotated (GitHub shows "
                   f"{MAX_PER_LEVEL} per level); see the full report")
    v = result.verdict
    out.append(f"stabcheck: {v.verdict.upper()} — {v.reason} (exit {v.exit_code})")
    return "\n".join(out) + "\n"
