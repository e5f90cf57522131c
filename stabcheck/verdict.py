"""Findings → pass/fail → exit code (the contract CI pipelines gate on).

=====  =========================================================================
code   meaning
=====  =========================================================================
0      passed: no finding at or above ``fail_on``
1      failed: findings at or above ``fail_on``
2      usage or config error (raised before any verdict exists)
3      not carried out: too few probes finished, or the grid was not covered
130    interrupted: a partial report marked INCOMPLETE was written
=====  =========================================================================

``--exit-zero`` turns 1 into 0 and nothing else. An audit that did not cover its grid never
reports "passed".
"""

from __future__ import annotations

from dataclasses import dataclass

from stabcheck.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_CARRIED_OUT, EXIT_PASSED
from stabcheck.findings import Finding, Severity

FINISHED_OUTCOMES = ("completed", "nonfinite")


@dataclass(frozen=True)
class Verdict:
    """The outcome of an audit."""

    verdict: str  # passed | failed | incomplete | not_carried_out
    exit_code: int
    complete: bool
    reason: str


def failing(findings: list[Finding], fail_on: str) -> list[Finding]:
    """Findings at or above ``fail_on`` (none for ``never``)."""
    if fail_on == "never":
        return []
    bar = Severity(fail_on).rank
    return [f for f in findings if f.severity.rank >= bar]


def decide(findings: list[Finding], outcomes: list[str], planned: int, fail_on: str,
           min_finished_fraction: float, interrupted: bool = False,
           exit_zero: bool = False) -> Verdict:
    """Turn findings and probe outcomes into a verdict and an exit code."""
    finished = sum(1 for o in outcomes if o in FINISHED_OUTCOMES)
    covered = len(outcomes) >= planned
    if interrupted:
        return Verdict("incomplete", EXIT_INTERRUPTED, False,
                       f"interrupted after {len(outcomes)} of {planned} probes")
    if not covered:
        return Verdict("incomplete", EXIT_NOT_CARRIED_OUT, False,
                       f"only {len(outcomes)} of {planned} probes were run")
    if planned and finished < min_finished_fraction * planned:
        return Verdict("not_carried_out", EXIT_NOT_CARRIED_OUT, True,
                       f"only {finished} of {planned} probes finished (need "
                       f"{min_finished_fraction:.0%}); see the error findings")
    bad = failing(findings, fail_on)
    if bad:
        return Verdict("failed", EXIT_PASSED if exit_zero else EXIT_FAILED, True,
                       f"{len(bad)} finding(s) at or above fail_on={fail_on}")
    return Verdict("passed", EXIT_PASSED, True, f"no finding at or above fail_on={fail_on}")
