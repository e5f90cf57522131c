"""The Python API's types: what :func:`stabcheck.audit` takes and returns.

``stabcheck.audit(config, **overrides)`` (defined in :mod:`stabcheck.audit`) runs an audit
from a YAML path or a dict and returns an :class:`AuditResult`; a team gates on it inside
its own test suite with :meth:`AuditResult.assert_stable`. See ``docs/python-api.md``.

The overrides mirror the CLI's flags, and a mistake raises the same
:class:`~stabcheck.errors.StabcheckError` subclass the CLI would report, with the same
one-line message and its ``exit_code`` (2 config error, 3 not carried out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stabcheck.errors import ConfigError
from stabcheck.findings import Finding

if TYPE_CHECKING:
    from stabcheck.result import AuditResult as Report

# keyword → dotted config key, as the CLI's --steps/--lr/--seeds/--batch-size/--device/--fail-on
OVERRIDE_KEYS = {"steps": "probe.steps", "lr": "sweep.learning_rates",
                 "seeds": "sweep.seeds", "batch_size": "sweep.batch_sizes",
                 "device": "probe.device", "fail_on": "fail_on", "dtype": "probe.dtype",
                 "grad_clip": "probe.grad_clip"}
_LISTS = ("lr", "seeds", "batch_size")


def config_overrides(values: Mapping[str, Any],
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Dotted config overrides from the API's keywords (``None`` means: keep the config's).

    A single number given for ``lr``, ``seeds`` or ``batch_size`` is a one-value sweep, as
    ``--lr 0.01`` is on the command line; ``extra`` holds any other dotted keys
    (``{"probe.warmup_steps": 10}``).
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in _LISTS and not isinstance(value, Sequence | Mapping):
            value = [value]
        elif key in _LISTS and isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        out[OVERRIDE_KEYS[key]] = value
    for dotted, value in (extra or {}).items():
        if not isinstance(dotted, str) or not dotted or any(not p for p in dotted.split(".")):
            raise ConfigError(f"<arguments>: overrides: {dotted!r} is not a dotted config key "
                              "such as 'probe.warmup_steps'")
        out[dotted] = value
    return out


@dataclass(frozen=True)
class ProbeResult:
    """One probe of the grid: where it sits, what became of it, what was found in it."""

    index: int
    lr: float
    seed: int
    batch_size: int
    status: str  # healthy | unstable | diverged | error | timeout | oom
    steps_run: int
    stats: dict[str, float | None]  # final_loss, max_grad_norm, clip_fraction, …
    findings: list[str]  # finding codes


class StabilityAssertionError(AssertionError):
    """:meth:`AuditResult.assert_stable` failed; the message reads like the terminal report."""


@dataclass
class AuditResult:
    """A finished audit, as the Python API returns it.

    * ``verdict`` — ``passed`` | ``failed`` | ``incomplete`` | ``not_carried_out``;
    * ``exit_code`` — what ``stabcheck audit`` would have exited with (0, 1, 3, 130);
    * ``probes`` — one :class:`ProbeResult` per grid point;
    * ``findings`` — every :class:`~stabcheck.findings.Finding`, most severe first;
    * ``summary`` — the JSON report's ``summary`` (sweep-level figures);
    * ``max_stable_lr`` — per batch size, the largest swept learning rate at which every
      seed trained healthily (``None`` where none did);
    * ``results_dir`` — the audit's directory (journal and ``report.json``);
    * ``report`` — the full internal result, for :meth:`render`.
    """

    verdict: str
    exit_code: int
    reason: str
    probes: list[ProbeResult]
    findings: list[Finding]
    summary: dict[str, Any]
    max_stable_lr: dict[int, float | None]
    results_dir: Path
    report: Report = field(repr=False)

    @classmethod
    def from_report(cls, report: Report, results_dir: Path) -> AuditResult:
        """Build the public result from the internal one."""
        diagnosis = report.diagnosis
        probes = [ProbeResult(index=p.record.index, lr=p.record.lr, seed=p.record.seed,
                              batch_size=p.record.batch_size, status=p.status,
                              steps_run=p.record.steps_run, stats=p.stats.to_json(),
                              findings=sorted({f.code for f in p.findings}))
                  for p in diagnosis.probes]
        msl = {int(bs): lr for bs, lr in diagnosis.summary.max_stable_lr.items()}
        return cls(verdict=report.verdict.verdict, exit_code=report.exit_code,
                   reason=report.verdict.reason, probes=probes,
                   findings=list(diagnosis.findings), summary=diagnosis.summary.to_json(),
                   max_stable_lr=dict(sorted(msl.items())), results_dir=results_dir,
                   report=report)

    @property
    def passed(self) -> bool:
        """Whether the audit passed (no finding at or above ``fail_on``, grid covered)."""
        return self.verdict == "passed"

    def render(self, fmt: str = "text") -> str:
        """The report in any CLI format: text, json, markdown, junit, github, html."""
        from stabcheck.report import render

        return render(self.report, fmt)

    def to_json(self) -> dict[str, Any]:
        """The JSON report as plain data (the same document as ``--format json``)."""
        parsed: dict[str, Any] = json.loads(self.render("json"))
        return parsed

    def assert_stable(self, max_lr_at_least: float | None = None,
                      at_batch_size: int | None = None) -> None:
        """Fail (``AssertionError``) unless the audit passed and, when asked, the max stable
        LR at ``at_batch_size`` (default: every swept batch size) is at least
        ``max_lr_at_least``. The message is the plain-text terminal report, headed by what
        failed."""
        problems: list[str] = []
        if not self.passed:
            problems.append(f"audit {self.verdict}: {self.reason}")
        if at_batch_size is not None and at_batch_size not in self.max_stable_lr:
            swept = ", ".join(map(str, self.max_stable_lr)) or "none"
            problems.append(f"batch size {at_batch_size} was not swept (swept: {swept})")
        elif max_lr_at_least is not None:
            sizes = [at_batch_size] if at_batch_size is not None else list(self.max_stable_lr)
            for bs in sizes:
                lr = self.max_stable_lr[bs]
                if lr is None or lr < max_lr_at_least:
                    got = "no swept LR was stable" if lr is None else f"it is {lr:g}"
                    problems.append(f"max stable LR at batch size {bs} should be at least "
                                    f"{max_lr_at_least:g}; {got}")
        if problems:
            head = "\n".join(f"stabcheck: {p}" for p in problems)
            raise StabilityAssertionError(f"{head}\n\n{self.render('text')}")
