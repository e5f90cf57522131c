"""The Markdown report: for pull-request comments and GitHub's job summary.

GitHub-flavoured Markdown: a verdict line, the grid as a table (status symbols per seed and
the median final loss per cell), findings by severity, recommendations. ``max_bytes`` keeps
it under GitHub's 1 MiB step-summary limit by dropping findings past that size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stabcheck.report import plotdata
from stabcheck.report.terminal import SYMBOLS

if TYPE_CHECKING:
    from stabcheck.findings import Finding
    from stabcheck.result import AuditResult

STEP_SUMMARY_LIMIT = 1024 * 1024  # GitHub refuses a job summary over 1 MiB
_ICON = {"passed": "✅", "failed": "❌", "incomplete": "⚠️", "not_carried_out": "⚠️"}


# Characters GitHub-flavoured Markdown would read as formatting, and their escaped forms. ``<``,
# ``>`` and ``&`` become HTML entities (a backslash does not stop ``<loss function>`` from being
# read as a tag); the rest take a backslash.
_MD_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "`": "\\`",
               "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "~": "\\~", "|": "\\|"}


def text(value: Any) -> str:
    """A module name, user string or exception message as literal Markdown text: nothing in it
    is read as a tag, an entity, emphasis, a link or code; newlines become spaces."""
    out = "".join(_MD_ESCAPES.get(ch, ch) for ch in str(value))
    return " ".join(out.splitlines())


def cell(value: Any) -> str:
    """Text safe inside a Markdown table cell (no pipes or newlines, nothing read as markup)."""
    return text(value)


def _grid(result: AuditResult) -> list[str]:
    if not result.diagnosis.probes:
        return ["_No probe finished._", ""]
    sizes, lrs, cells = plotdata.grid(result)
    lines = ["| batch \\ lr | " + " | ".join(f"{lr:g}" for lr in lrs) + " |",
             "|---:|" + "---|" * len(lrs)]
    for bs in sizes:
        row: list[str] = []
        for lr in lrs:
            members = cells.get((bs, lr), [])
            if not members:
                row.append("–")
                continue
            symbols = "".join(SYMBOLS.get(m.status, ("?", ""))[0] for m in members)
            median = plotdata.median_final_loss(members)
            row.append(f"{symbols} {median:.3g}" if median is not None else symbols)
        lines.append(f"| **{bs}** | " + " | ".join(row) + " |")
    legend = ", ".join(f"{sym} {status}" for status, (sym, _) in SYMBOLS.items())
    return [*lines, "", f"<sub>{legend}; one symbol per seed, then the median final loss."
            "</sub>", ""]


def _finding_rows(findings: list[Finding]) -> list[str]:
    rows = ["| severity | code | finding | recommendation |", "|---|---|---|---|"]
    for f in findings:
        evidence = f.message + (f" ({f.evidence})" if f.evidence else "")
        rows.append(f"| {f.severity.value} | `{f.code}` {cell(f.title)} | {cell(evidence)} | "
                    f"{cell(f.recommendation)} |")
    return rows


def render(result: AuditResult, max_bytes: int | None = None) -> str:
    """The report as Markdown (at most ``max_bytes`` UTF-8 bytes when given)."""
    v = result.verdict
    counts = result.diagnosis.summary.by_status
    status = ", ".join(f"{n} {text(s)}" for s, n in counts.items() if n) or "no probes"
    head = [f"## {_ICON.get(v.verdict, '')} stabcheck: {cell(result.name)} — "
            f"{v.verdict.upper().replace('_', ' ')}", "",
            f"**{text(v.reason)}** (exit {v.exit_code}). {len(result.diagnosis.probes)}/"
            f"{result.planned} probes ({status}) on {text(result.environment.get('device', '?'))}.",
            ""]
    head += _grid(result)
    tail: list[str] = []
    recs = result.diagnosis.summary.recommendations
    if recs:
        tail += ["### Recommendations", "", *[f"- {text(r.text)}" for r in recs], ""]
    tail += [f"<sub>stabcheck {result.to_json()['tool']['version']} · fail_on="
             f"{result.fail_on} · `stabcheck explain CODE` for the theory behind a code</sub>",
             ""]
    findings = result.diagnosis.findings
    body = ["### Findings", ""] + (_finding_rows(findings) if findings else
                                   ["No findings."]) + [""]
    out = "\n".join(head + body + tail)
    if max_bytes is None or len(out.encode("utf-8")) <= max_bytes:
        return out
    # Too large: keep the most severe findings that fit, and say how many were left out.
    kept = len(findings)
    while kept > 0:
        kept = kept // 2
        note = (f"_… {len(findings) - kept} more finding(s) left out to stay under "
                f"{max_bytes // 1024} KiB; see the JSON report._")
        out = "\n".join([*head, "### Findings", "", *_finding_rows(findings[:kept]), "", note,
                          "", *tail])
        if len(out.encode("utf-8")) <= max_bytes:
            return out
    return out.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
