"""JUnit XML: one testcase per probe, for CI test-report views (GitLab, Jenkins, GitHub).

* a testcase per probe, named ``lr=0.1 seed=0 bs=32``, in one testsuite per batch size;
* a ``<failure>`` per error-level finding of that probe; sweep-level error findings (the
  stability margin, a batch size with no stable LR, …) go to a ``sweep`` testcase;
* an ``<error>`` for a probe that crashed, timed out or ran out of memory;
* warnings and infos are listed in the testcase's ``<system-out>``.

The message is in the ``message`` attribute *and* in the element text: GitLab shows only
the text.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from typing import TYPE_CHECKING

from stabcheck.records import CRASHED

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis
    from stabcheck.findings import Finding
    from stabcheck.result import AuditResult

# ANSI escape sequences (colour codes in an exception message), then every character XML 1.0
# cannot hold (C0 controls but tab, newline and CR; surrogates; U+FFFE/U+FFFF).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean(text: str) -> str:
    """``text`` as valid XML character data: ANSI codes dropped, other controls as ``?``."""
    return _NOT_XML.sub("?", _ANSI.sub("", text))


def _sanitise(root: ET.Element) -> None:
    for el in root.iter():
        if el.text:
            el.text = clean(el.text)
        if el.tail:
            el.tail = clean(el.tail)
        for key, value in el.attrib.items():
            el.attrib[key] = clean(value)


def _text(f: Finding) -> str:
    out = f"{f.code} {f.title}: {f.message}" + (f" ({f.evidence})" if f.evidence else "")
    return out + (f"\n{f.recommendation}" if f.recommendation else "")


def _failure(case: ET.Element, f: Finding) -> None:
    message = f"{f.code}: {f.message}"
    el = ET.SubElement(case, "failure", message=message, type=f.code)
    el.text = f"{message}\n{_text(f)}"


def _probe_case(suite: ET.Element, classname: str, p: ProbeDiagnosis,
                extra: list[Finding]) -> tuple[int, int]:
    r = p.record
    case = ET.SubElement(suite, "testcase", classname=classname, name=r.label,
                         time=f"{r.wall_time_s:.3f}")
    failures = errors = 0
    if r.outcome in CRASHED:
        err = r.error or {}
        message = f"{r.outcome}: {err.get('type', '')}: {err.get('message', '')}".strip(": ")
        if err.get("where"):
            message += f" at {err['where']}"
        el = ET.SubElement(case, "error", message=message, type=r.outcome)
        el.text = message
        errors += 1
    findings = p.findings + extra
    for f in findings:
        crash = r.outcome in CRASHED and f.info.junit == "crash"  # already an <error>
        if f.severity.value == "error" and not crash:
            _failure(case, f)
            failures += 1
    notes = [_text(f) for f in findings if f.severity.value != "error"]
    out = [f"status: {p.status}", f"steps: {r.steps_run}/{r.steps_planned}"]
    out += [f"{k}: {v}" for k, v in p.stats.to_json().items() if v is not None]
    ET.SubElement(case, "system-out").text = "\n".join(out + notes)
    return failures, errors


def render(result: AuditResult) -> str:
    """The JUnit XML document."""
    probes = result.diagnosis.probes
    in_probe = {id(f) for p in probes for f in p.findings}
    sweep = [f for f in result.diagnosis.findings if id(f) not in in_probe]
    root = ET.Element("testsuites", name=f"stabcheck {result.name}")
    by_bs: dict[int, list[ProbeDiagnosis]] = defaultdict(list)
    for p in probes:
        by_bs[p.record.batch_size].append(p)
    totals = {"tests": 0, "failures": 0, "errors": 0}
    prefix = f"stabcheck.{result.name}"
    for bs, members in sorted(by_bs.items()):
        suite = ET.SubElement(root, "testsuite", name=f"{prefix}.bs{bs}")
        failures = errors = 0
        for p in sorted(members, key=lambda m: (m.record.lr, m.record.seed)):
            f_, e_ = _probe_case(suite, f"{prefix}.bs{bs}", p, [])
            failures += f_
            errors += e_
        _count(suite, len(members), failures, errors,
               sum(m.record.wall_time_s for m in members), totals)
    suite = ET.SubElement(root, "testsuite", name=f"{prefix}.sweep")
    case = ET.SubElement(suite, "testcase", classname=f"{prefix}.sweep", name="sweep",
                         time="0.000")
    failures = 0
    for f in sweep:
        if f.severity.value == "error":
            _failure(case, f)
            failures += 1
    v = result.verdict
    lines = [f"verdict: {v.verdict} — {v.reason} (exit {v.exit_code})"]
    lines += [_text(f) for f in sweep if f.severity.value != "error"]
    lines += [r.text for r in result.diagnosis.summary.recommendations]
    ET.SubElement(case, "system-out").text = "\n".join(lines)
    if not v.complete:
        el = ET.SubElement(case, "error", message=v.reason, type=v.verdict)
        el.text = v.reason
    _count(suite, 1, failures, 0 if v.complete else 1, 0.0, totals)
    for key, value in totals.items():
        root.set(key, str(value))
    _sanitise(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") \
        + "\n"


def _count(suite: ET.Element, tests: int, failures: int, errors: int, seconds: float,
           totals: dict[str, int]) -> None:
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", f"{seconds:.3f}")
    totals["tests"] += tests
    totals["failures"] += failures
    totals["errors"] += errors
