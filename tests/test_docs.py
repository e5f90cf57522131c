"""The README stays true: every finding code and every threshold is documented there."""

from __future__ import annotations

from pathlib import Path

import stabcheck.diagnose  # noqa: F401  (registers every code)
from stabcheck.findings import REGISTRY
from stabcheck.thresholds import Thresholds

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_finding_code_is_in_the_readme() -> None:
    missing = [c for c in REGISTRY if f"| {c} |" not in README]
    assert missing == []


def test_every_threshold_is_in_the_readme_with_its_default() -> None:
    defaults = Thresholds()
    missing = [n for n in Thresholds.model_fields
               if f"| `{n}` | {getattr(defaults, n)!r} |" not in README]
    assert missing == []


def test_every_code_has_a_source_and_a_recommendation() -> None:
    for info in REGISTRY.values():
        assert info.source and info.recommendation and info.explanation, info.code
        for name in info.thresholds:
            assert name in Thresholds.model_fields, (info.code, name)
