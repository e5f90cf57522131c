"""Shared helpers of the attack suite: run the CLI in-process, read reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from stabcheck.cli import cli

# A sweep of two probes that trains in well under a second.
TWO_PROBES: dict[str, Any] = {"sweep": {"learning_rates": [0.01, 0.1], "seeds": [0]},
                              "probe": {"steps": 6, "flush_every": 3}}


def run(*args: Any) -> Result:
    """``stabcheck ARGS`` in-process; exceptions are left to the CLI (as a user sees them)."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def one_line_error(result: Result) -> str:
    """The stderr of a refused command: it ends with an ``error:`` line (progress lines may
    come before it) and holds no traceback and no internal error."""
    assert "Traceback" not in result.output and "internal error" not in result.output, \
        result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    return result.stderr


def journal_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "probes.jsonl").read_text().splitlines()
            if line.strip()]
