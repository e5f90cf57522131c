"""Every output format: golden files, JUnit structure, GitHub escaping, Markdown limits."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stabcheck import __version__
from stabcheck.report import FORMATS, render
from stabcheck.report.github import annotation, escape_data, escape_property
from stabcheck.report.markdown import render as markdown
from tests.report.synthetic import GOLDEN, synthetic_result

REPO = Path(__file__).resolve().parents[2]
UPDATE = bool(os.environ.get("STABCHECK_UPDATE_GOLDEN"))
TEXT_FORMATS = ["json", "text", "junit", "markdown", "github"]


def normalised(text: str) -> str:
    """Paths and versions that differ between machines, replaced by placeholders."""
    return text.replace(str(REPO), "<repo>").replace(f"stabcheck {__version__}",
                                                     "stabcheck <version>").replace(
        f'"version": "{__version__}"', '"version": "<version>"')


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_golden(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_WORKSPACE", str(REPO))
    text = normalised(render(synthetic_result(), fmt))
    golden = GOLDEN / f"report.{fmt}"
    if UPDATE:
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"{golden.name} is missing; create it with STABCHECK_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8"), \
        f"{golden.name} changed; rerun with STABCHECK_UPDATE_GOLDEN=1 if intended"


def test_every_registered_text_format_has_a_golden_file() -> None:
    assert set(FORMATS) - {"rich", "html"} <= set(TEXT_FORMATS)


def test_junit_structure() -> None:
    result = synthetic_result()
    root = ET.fromstring(render(result, "junit"))
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"stabcheck.golden.bs32", "stabcheck.golden.bs128",
                           "stabcheck.golden.sweep"}
    cases = {c.get("name"): c for s in suites.values() for c in s.findall("testcase")}
    assert len(cases) == 13  # 12 probes + the sweep
    assert "lr=0.1 seed=1 bs=32" in cases
    # One <failure> per error-level finding of a diverged probe, message also as text.
    [failure] = cases["lr=1 seed=0 bs=32"].findall("failure")
    assert failure.get("type") == "SC101"
    assert failure.get("message") in failure.text
    # A crashed probe is an <error>, not a failure.
    [error] = cases["lr=1 seed=1 bs=128"].findall("error")
    assert error.get("type") == "error" and "ValueError" in error.text
    assert cases["lr=1 seed=1 bs=128"].findall("failure") == []
    # Sweep-level error findings fail the sweep testcase; warnings are only system-out.
    assert [f.get("type") for f in cases["sweep"].findall("failure")] == ["SC501"]
    assert cases["lr=0.1 seed=1 bs=32"].findall("failure") == []
    assert "SC201" in cases["lr=0.1 seed=1 bs=32"].find("system-out").text
    # Totals add up.
    assert root.get("tests") == "13" and root.get("failures") == "3" and root.get("errors") == "1"
    assert sum(int(s.get("failures", 0)) for s in suites.values()) == 3


def test_github_escaping() -> None:
    assert escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"
    finding = synthetic_result().diagnosis.findings[0]
    finding.message = "x: 1, y: 2%\nsecond line"
    line = annotation(finding, "dir/my,config:1.yaml", 7)
    assert line.startswith("::error file=dir/my%2Cconfig%3A1.yaml,line=7,title=SC101 ")
    assert line.endswith("::x: 1, y: 2%25%0Asecond line%0A" + escape_data(
        finding.recommendation))
    assert "\n" not in line


def test_github_annotations_point_at_the_key_line_and_are_capped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_WORKSPACE", str(REPO))
    result = synthetic_result()
    lines = render(result, "github").splitlines()
    margin = next(line for line in lines if "SC501" in line)
    assert "file=tests/report/golden/config.yaml,line=17," in margin  # target_lr: 0.08
    lr = next(line for line in lines if "SC101" in line)
    assert ",line=11," in lr  # learning_rates
    many = synthetic_result()
    many.diagnosis.findings = many.diagnosis.findings[:1] * 25
    lines = render(many, "github").splitlines()
    assert sum(line.startswith("::error") for line in lines) == 10
    assert "15 more finding(s) not annotated" in "\n".join(lines)


def test_markdown_respects_the_size_limit() -> None:
    result = synthetic_result()
    result.diagnosis.findings = result.diagnosis.findings * 400
    full = markdown(result)
    assert len(full.encode()) > 50_000
    small = markdown(result, max_bytes=20_000)
    assert len(small.encode()) <= 20_000 and "left out to stay under" in small
    assert small.startswith("## ❌ stabcheck: golden — FAILED")
