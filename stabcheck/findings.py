"""Findings, severities and the registry of stable finding codes.

Every detector registers the codes it can emit, with the theory behind them, the published
source of its default threshold and what to do about it; ``stabcheck explain CODE`` prints
exactly this. Codes never change meaning once released: new checks get new codes.

Families: SC1xx numerics and divergence, SC2xx loss dynamics, SC3xx gradients, SC4xx
clipping, SC5xx sweep-level, SC6xx initialisation, SC7xx curvature, SC8xx execution, SC9xx
normalisation (declared once, with their detectors, in ``stabcheck.diagnose.FAMILIES``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from stabcheck.records import significant


class Severity(StrEnum):
    """How bad a finding is. ``fail_on`` compares against this order."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        """0 for info, 1 for warning, 2 for error."""
        return ("info", "warning", "error").index(self.value)


@dataclass(frozen=True)
class CodeInfo:
    """What one finding code means. Shown by ``stabcheck explain``."""

    code: str
    name: str
    title: str
    severity: Severity
    family: str
    explanation: str
    source: str
    recommendation: str
    thresholds: tuple[str, ...] = ()
    config_key: str | None = None
    # What the code means for a probe's status: "diverged" codes make it diverged; "hint"
    # codes are never findings (shown once in the summary); any other code makes a probe
    # unstable at warning or error severity and leaves it healthy at info.
    status: str | None = None
    # The plotted series (loss, grad_norm, sharpness) whose steps this code's findings mark.
    plots: tuple[str, ...] = ()
    # False for a cause the learning rate cannot fix (bad data, the loss function): while a
    # finding of such a code stands, no learning rate is recommended and SC504 names it.
    lr_fixable: bool = True
    # Findings of this code in a probe's first steps suggest a warmup (recommendations).
    suggests_warmup: bool = False
    # JUnit: an error-level finding is a <failure> of its testcase, except that a "crash"
    # code on a crashed probe is already the testcase's <error>.
    junit: str = "failure"

    @property
    def diverged(self) -> bool:
        """Whether a finding of this code means the probe diverged."""
        return self.status == "diverged"


REGISTRY: dict[str, CodeInfo] = {}


def codes_where(**wanted: object) -> tuple[str, ...]:
    """The registered codes whose entries have every given attribute value, sorted."""
    return tuple(sorted(code for code, info in REGISTRY.items()
                        if all(getattr(info, k) == v for k, v in wanted.items())))


def register(info: CodeInfo) -> CodeInfo:
    """Add a code to the registry (each code exactly once)."""
    if info.code in REGISTRY:
        raise ValueError(f"finding code {info.code} registered twice")
    REGISTRY[info.code] = info
    return info


@dataclass
class Finding:
    """One thing the audit found, with its evidence and what to do."""

    code: str
    severity: Severity
    message: str
    probes: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    value: float | None = None
    threshold: float | None = None
    recommendation: str = ""
    config_key: str | None = None

    def __post_init__(self) -> None:
        # The reports' one rounding rule (stabcheck.diagnose.results): 6 significant digits.
        if isinstance(self.value, float):
            self.value = significant(self.value)
        if isinstance(self.threshold, float):
            self.threshold = significant(self.threshold)

    @property
    def info(self) -> CodeInfo:
        """The registry entry of this finding's code."""
        return REGISTRY[self.code]

    @property
    def title(self) -> str:
        """The code's short title."""
        return self.info.title

    @property
    def evidence(self) -> str | None:
        """``value V, threshold T`` when the finding measured a value against a threshold."""
        if self.value is None or self.threshold is None:
            return None
        return f"value {self.value:.4g}, threshold {self.threshold:.4g}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report."""
        data = asdict(self)
        data["severity"] = self.severity.value
        data["title"] = self.title
        data["name"] = self.info.name
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["severity"] = Severity(kwargs["severity"])
        return cls(**kwargs)


def make(code: str, message: str, severity: Severity | None = None, **kwargs: Any) -> Finding:
    """A finding of a registered code; severity and recommendation default to the code's."""
    info = REGISTRY[code]
    if info.status == "hint":
        raise ValueError(f"{code} is a hint, shown once in the summary, never a finding")
    kwargs.setdefault("recommendation", info.recommendation)
    kwargs.setdefault("config_key", info.config_key)
    return Finding(code=code, severity=severity or info.severity, message=message, **kwargs)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by code, then by first probe."""
    return sorted(findings, key=lambda f: (-f.severity.rank, f.code,
                                           f.probes[0] if f.probes else -1, f.message))
