"""The human report: grid with status symbols and sparklines, findings by severity, advice."""

from __future__ import annotations

import numpy as np

from stabcheck.report.terminal import render, sparkline
from stabcheck.result import AuditResult


def test_sparkline_is_log_scaled_and_marks_nonfinite() -> None:
    assert sparkline(np.geomspace(100, 1, 8), width=8) == "█▇▆▅▄▃▂▁"
    line = sparkline(np.array([1.0, 2.0, np.nan]), width=3)
    assert line.endswith("×") and len(line) == 3


def test_report_sections_from_a_real_audit(runner_audit) -> None:
    result: AuditResult = runner_audit
    text = render(result)
    assert "Probe grid" in text and "✗" in text and "✓" in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█")
    findings = text.split("Findings")[1].split("Recommendations")[0]
    severities = [w for w in findings.split() if w in ("ERROR", "WARNING", "INFO")]
    order = {"ERROR": 0, "WARNING": 1, "INFO": 2}
    assert severities == sorted(severities, key=order.__getitem__) and severities[0] == "ERROR"
    assert "max stable LR 0.1" in text and "grad_clip:" in text
    assert "Verdict: FAILED" in text
