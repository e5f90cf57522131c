"""Execution: probes that could not be carried out (user-code error, timeout, out of memory)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from stabcheck.diagnose.context import Context
from stabcheck.findings import CodeInfo, Finding, Severity, make, register
from stabcheck.records import ProbeRecord

if TYPE_CHECKING:
    from stabcheck.diagnose import ProbeDiagnosis

register(CodeInfo(
    code="SC801", name="probe-error", title="User code raised during a probe",
    severity=Severity.ERROR, family="execution",
    explanation=(
        "An exception escaped the model, the loss or the data while a probe was training. "
        "The probe is recorded as 'error' with the exception type, message and the innermost "
        "frame of your code; the rest of the audit went on. A bug that only shows at some "
        "learning rates or steps (an assert on a value range, a shape that depends on the "
        "data) shows up here."),
    source="stabcheck design: a probe never takes the audit down with it.",
    recommendation="Open the frame named in the finding and fix the exception; re-run with "
                   "--resume to keep the probes that finished.",
    junit="crash",
))

register(CodeInfo(
    code="SC802", name="probe-timeout", title="Probe ran past its time limit",
    severity=Severity.ERROR, family="execution",
    explanation=(
        "The probe did not finish within probe.timeout_s and was stopped. Either the model is "
        "much slower than the limit allows (raise it, or lower probe.steps), or something "
        "hangs: a dataloader waiting forever, a collective with no peer, an infinite loop at "
        "some learning rate."),
    source="stabcheck design: a hung probe must never hang a CI job.",
    recommendation="Raise probe.timeout_s if the probe is just slow; otherwise find the hang "
                   "at the learning rate named in the finding.",
    config_key="probe.timeout_s", junit="crash",
))

register(CodeInfo(
    code="SC803", name="probe-oom", title="Probe ran out of memory",
    severity=Severity.ERROR, family="execution",
    explanation=(
        "The device ran out of memory at this batch size. The memory was released and the "
        "audit went on with the next probe. The report lists which batch sizes fit."),
    source="stabcheck design.",
    recommendation="Drop the batch sizes that do not fit from sweep.batch_sizes, use "
                   "probe.dtype: bfloat16, or audit on a larger device.",
    config_key="sweep.batch_sizes", junit="crash",
))

_CODES = {"error": "SC801", "timeout": "SC802", "oom": "SC803"}


def detect(record: ProbeRecord, ctx: Context) -> list[Finding]:
    """One finding per probe that errored or timed out (OOMs are grouped by batch size)."""
    if record.outcome not in ("error", "timeout"):
        return []
    err = record.error or {}
    text = f"{err.get('type', 'Error')}: {err.get('message', '')}".strip(": ")
    where = f" at {err['where']}" if err.get("where") else ""
    # A worker that died took the probe's trace with it: no step to name.
    step = f" at step {record.steps_run}" if record.outcome == "error" \
        and err.get("type") != "WorkerDied" else ""
    return [make(_CODES[record.outcome], f"{text}{where}{step} ({record.label})",
                 probes=[record.index], steps=[record.steps_run])]


def analyse(probes: list[ProbeDiagnosis], ctx: Context) -> tuple[dict[str, Any], list[Finding]]:
    """One SC803 per batch size that ran out of memory; the summary lists those sizes."""
    by_bs: dict[int, list[ProbeRecord]] = defaultdict(list)
    for p in probes:
        if p.record.outcome == "oom":
            by_bs[p.record.batch_size].append(p.record)
    findings = [make("SC803", f"batch size {bs} ran out of memory in {len(rs)} probe(s)",
                     probes=[r.index for r in rs], value=float(bs))
                for bs, rs in sorted(by_bs.items())]
    return {"oom_batch_sizes": tuple(sorted(by_bs))}, findings
