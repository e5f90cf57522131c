"""The exit-code contract as a table: findings and outcomes in, verdict and exit code out."""

from __future__ import annotations

import pytest

from stabcheck.findings import Finding, Severity
from stabcheck.verdict import decide

ERROR = Finding("SC101", Severity.ERROR, "diverged")
WARNING = Finding("SC201", Severity.WARNING, "spiky")
DONE = ["completed"] * 4

# (findings, outcomes, planned, fail_on, interrupted, exit_zero) → (verdict, exit code)
TABLE = [
    ([], DONE, 4, "error", False, False, "passed", 0),
    ([WARNING], DONE, 4, "error", False, False, "passed", 0),
    ([WARNING], DONE, 4, "warning", False, False, "failed", 1),
    ([ERROR], DONE, 4, "error", False, False, "failed", 1),
    ([ERROR], DONE, 4, "never", False, False, "passed", 0),
    ([ERROR], DONE, 4, "error", False, True, "failed", 0),  # --exit-zero: only 1 becomes 0
    ([], ["completed", "error", "error", "error"], 4, "error", False, False,
     "not_carried_out", 3),
    ([], ["completed", "error", "error", "error"], 4, "error", False, True,
     "not_carried_out", 3),  # --exit-zero leaves 3 alone
    ([], DONE[:2], 4, "error", False, False, "incomplete", 3),  # grid not covered
    ([], DONE[:2], 4, "error", True, False, "incomplete", 130),
    ([ERROR], DONE[:2], 4, "error", True, True, "incomplete", 130),  # --exit-zero: not 130
    ([], ["nonfinite"] * 4, 4, "error", False, False, "passed", 0),  # diverging is finishing
]


@pytest.mark.parametrize("findings,outcomes,planned,fail_on,interrupted,exit_zero,verdict,code",
                         TABLE)
def test_verdict_table(findings: list[Finding], outcomes: list[str], planned: int,
                       fail_on: str, interrupted: bool, exit_zero: bool, verdict: str,
                       code: int) -> None:
    got = decide(findings, outcomes, planned, fail_on, 0.5, interrupted=interrupted,
                 exit_zero=exit_zero)
    assert (got.verdict, got.exit_code) == (verdict, code)
    assert got.complete == (verdict not in ("incomplete",))
