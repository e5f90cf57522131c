"""Run an audit: config → plan → engine → journal → diagnosis → verdict.

This module wires the stages together and owns the side effects of a run (the results
directory, the journal, progress). It knows nothing about terminals or output formats.
"""

from __future__ import annotations

import re
import sys
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from stabcheck.api import AuditResult as PublicResult
from stabcheck.api import config_overrides
from stabcheck.config import LoadedConfig, load_config, load_mapping
from stabcheck.engine import Engine, EngineSettings
from stabcheck.engine.curvature import PROBE_BATCH, init_curvature
from stabcheck.engine.initcheck import initial_checks
from stabcheck.engine.sequential import free_memory
from stabcheck.engine.vectorized import select_engine
from stabcheck.errors import ConfigError
from stabcheck.executors import DEFAULT_GRACE_S, Executor, Interrupts, Job, choose_executor
from stabcheck.journal import REPORT_NAME, Journal, JournalContents, read_journal
from stabcheck.plan import config_digest, make_cohorts, plan_probes
from stabcheck.problem import build_problem
from stabcheck.project import project_defaults
from stabcheck.records import ProbeRecord
from stabcheck.result import AuditResult, build_result, environment

DEFAULT_RESULTS_ROOT = Path("stabcheck-results")


class Progress(Protocol):
    """Receives progress events; the CLI renders them (rich bar or plain lines)."""

    def start(self, total: int, done: int, steps_per_probe: int) -> None:
        """The audit begins: ``total`` probes, ``done`` of them already in the journal."""

    def steps(self, n: int) -> None:
        """``n`` more training steps finished in the running cohort."""

    def probe_done(self, record: ProbeRecord) -> None:
        """One probe finished and was journaled."""

    def note(self, message: str) -> None:
        """A one-line note for the user."""

    def stop(self) -> None:
        """The audit ended (normally or not)."""


class _NoProgress:
    def start(self, total: int, done: int, steps_per_probe: int) -> None: ...
    def steps(self, n: int) -> None: ...
    def probe_done(self, record: ProbeRecord) -> None: ...
    def note(self, message: str) -> None: ...
    def stop(self) -> None: ...


@dataclass
class AuditOptions:
    """How to run an audit (the CLI's flags)."""

    out_dir: Path | None = None
    resume: bool = False
    overwrite: bool = False
    exit_zero: bool = False
    fail_on: str | None = None
    progress: Progress = field(default_factory=_NoProgress)
    # An engine object, or its name: auto | vectorized | sequential (auto when None).
    engine: Engine | str | None = None
    executor: str | Executor = "auto"  # auto | local | process, or an executor object
    grace_s: float = DEFAULT_GRACE_S  # after a first Ctrl-C, how long running probes may finish


def default_out_dir(name: str) -> Path:
    """``stabcheck-results/<name>-<YYYYmmdd-HHMMSS>``: a new directory per run."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "audit"
    return DEFAULT_RESULTS_ROOT / f"{safe}-{datetime.now():%Y%m%d-%H%M%S}"


def run_audit(loaded: LoadedConfig, options: AuditOptions | None = None) -> tuple[AuditResult,
                                                                                   Path]:
    """Run the audit ``loaded`` describes. Returns the result and the results directory.

    A first Ctrl-C (SIGINT) stops scheduling and lets the running probes finish for
    ``options.grace_s`` seconds; a second one, or the end of the grace period, stops at once.
    Either way the probes already journaled are kept and the result is marked incomplete
    (exit 130).
    """
    options = options or AuditOptions()
    cfg = loaded.config
    started = time.perf_counter()
    problem = build_problem(loaded)  # imports user code, after the schema validated
    for note in problem.notes:
        options.progress.note(note)
    setup_s = time.perf_counter() - started
    probes = plan_probes(cfg)
    digest = config_digest(cfg)
    out_dir = options.out_dir or default_out_dir(cfg.name)
    header: dict[str, Any] = {
        "config_digest": digest, "config": cfg.model_dump(mode="json"),
        "config_path": str(loaded.path), "planned": len(probes),
        "environment": environment(str(problem.device)),
    }
    if options.resume:
        journal, contents = Journal.resume(out_dir, digest)
        done = set(contents.probes)
    else:
        journal = Journal.create(out_dir, header, overwrite=options.overwrite)
        contents = JournalContents(header=header)
        done = set()
        for note in problem.notes:  # what was converted on the user's behalf, in the report
            journal.append_event({"event": "data", "message": note})
    todo = [p for p in probes if p.key(digest) not in done]
    keys = {p.index: p.key(digest) for p in probes}
    engine = options.engine
    settings = EngineSettings.from_config(cfg.probe)
    executor = options.executor if not isinstance(options.executor, str) else \
        choose_executor(options.executor, settings.timeout_s, problem.device)
    progress = options.progress
    control = Interrupts(grace_s=options.grace_s)
    interrupted = False
    progress.start(len(probes), len(probes) - len(todo), settings.steps)
    with control.installed():
        try:
            data = problem.data.to(problem.device)

            def on_record(record: ProbeRecord) -> None:
                with control.critical():  # a forced stop never cuts a journal line
                    journal.append_probe(record)  # durable before anything else happens
                done.add(record.key)
                progress.probe_done(record)

            for seed in sorted({p.seed for p in probes} - set(contents.init)):
                if control.stop_requested:
                    break
                report = initial_checks(problem, seed, data)
                report["curvature"] = init_curvature(problem, seed, data, cfg.sweep.batch_sizes,
                                                     cfg.probe.curvature_batch or PROBE_BATCH)
                with control.critical():
                    journal.append_init(seed, report)
            if engine is None or isinstance(engine, str):
                engine, engine_note = select_engine(problem, engine or "auto", settings, data,
                                                    todo)
                if engine_note:
                    with control.critical():
                        journal.append_event({"event": "engine", "message": engine_note})
                    progress.note(engine_note)

            def on_note(message: str) -> None:
                with control.critical():
                    journal.append_event({"event": "engine", "message": message})
                progress.note(message)

            if getattr(engine, "on_note", False) is None:  # engines that note run-time fallbacks
                engine.on_note = on_note  # type: ignore[union-attr]
            if not getattr(executor, "in_process", True):
                # Probes run in workers with their own copy: give this one's device memory back.
                data = problem.data
                free_memory(problem.device)
            job = Job(loaded=loaded, problem=problem, data=data, engine=engine.name,
                      settings=settings, keys=keys, setup_s=setup_s, engine_obj=engine,
                      on_note=on_note)
            if not control.stop_requested:
                executor.run(job, make_cohorts(todo), on_record, progress.steps, control)
            control.settle()
            # A Ctrl-C that came after the last probe had finished interrupted nothing.
            interrupted = control.stop_requested and len(done) < len(probes)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            control.settle()  # from here on Ctrl-C no longer cuts the report short
            progress.stop()
        if interrupted:
            with control.critical():
                journal.append_event({"event": "interrupted", "message": "interrupted by the "
                                      "user; the report is INCOMPLETE"})
        result = finish(out_dir, read_journal(out_dir), interrupted=interrupted,
                        exit_zero=options.exit_zero, fail_on=options.fail_on,
                        wall_time_s=time.perf_counter() - started)
    return result, out_dir


def predict_only(loaded: LoadedConfig) -> dict[str, Any]:
    """``stabcheck audit --predict-only``: curvature at init per seed, no probe training.

    Returns plain data: per seed the init curvature report, and per batch size the predicted
    LR ceiling (the smallest over seeds: the conservative one).
    """
    cfg = loaded.config
    started = time.perf_counter()
    problem = build_problem(loaded)
    data = problem.data.to(problem.device)
    seeds = {str(seed): init_curvature(problem, seed, data, cfg.sweep.batch_sizes,
                                       cfg.probe.curvature_batch or PROBE_BATCH)
             for seed in cfg.sweep.seeds}
    ceilings: dict[str, float | None] = {}
    for bs in sorted(cfg.sweep.batch_sizes):
        values = [s["by_batch_size"][str(bs)]["predicted_lr_ceiling"] for s in seeds.values()
                  if "by_batch_size" in s]
        finite = [v for v in values if v is not None]
        ceilings[str(bs)] = min(finite) if finite else None
    errors = [s["error"] for s in seeds.values() if "error" in s]
    return {"name": cfg.name, "predict_only": True, "device": str(problem.device),
            "optimizer": cfg.optimizer.name, "predicted_lr_ceiling": ceilings,
            "target_lr": cfg.target_lr, "seeds": seeds, "errors": errors,
            "timings": {"wall_time_s": round(time.perf_counter() - started, 3)}}


def finish(out_dir: Path, contents: JournalContents, interrupted: bool = False,
           exit_zero: bool = False, fail_on: str | None = None,
           wall_time_s: float | None = None) -> AuditResult:
    """Build the result from the journal and write ``report.json`` beside it."""
    from stabcheck.report import render

    timings = {"wall_time_s": round(wall_time_s, 3)} if wall_time_s is not None else {}
    result = build_result(contents, interrupted=interrupted, exit_zero=exit_zero,
                          fail_on=fail_on, timings=timings)
    (out_dir / REPORT_NAME).write_text(render(result, "json"), encoding="utf-8")
    return result


def audit(config: str | Path | Mapping[str, Any], *, steps: int | None = None,
          lr: float | list[float] | None = None, seeds: int | list[int] | None = None,
          batch_size: int | list[int] | None = None, device: str | None = None,
          dtype: str | None = None, grad_clip: float | None = None,
          fail_on: str | None = None, engine: str | Engine = "auto",
          executor: str | Executor = "auto", out_dir: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, exit_zero: bool = False,
          isolated: bool = False, overrides: Mapping[str, Any] | None = None,
          base_dir: str | Path | None = None,
          progress: Progress | None = None) -> PublicResult:
    """Run an audit from a YAML file or a dict; return its :class:`~stabcheck.api.AuditResult`.

    The keywords mirror ``stabcheck audit``'s flags (``steps`` = ``--steps``, ``lr`` =
    ``--lr``, ``seeds``, ``batch_size``, ``device``, ``fail_on``, ``engine``, ``executor``,
    ``out_dir`` = ``--out``, ``resume``, ``overwrite``, ``exit_zero``, ``isolated``);
    ``overrides`` sets any other dotted key (``{"probe.warmup_steps": 10}``). A dict config
    resolves its relative paths against ``base_dir`` (default: the working directory).

    Raises the CLI's errors: :class:`~stabcheck.errors.ConfigError` (``exit_code`` 2) for a
    config or argument mistake, :class:`~stabcheck.errors.UserCodeError` (3) when user code
    raised. A failing audit is not an exception: check ``result.exit_code`` or call
    ``result.assert_stable()``.
    """
    dotted = config_overrides({"steps": steps, "lr": lr, "seeds": seeds,
                               "batch_size": batch_size, "device": device, "dtype": dtype,
                               "grad_clip": grad_clip, "fail_on": fail_on}, overrides)
    if isinstance(config, Mapping):
        loaded = load_mapping(dict(config), overrides=dotted, base_dir=base_dir)
    else:
        defaults, _ = project_defaults(Path(config), isolated)
        loaded = load_config(config, overrides=dotted, defaults=defaults)
    if resume and out_dir is None:
        raise ConfigError("<arguments>: resume=True needs out_dir, the results directory")
    opts = AuditOptions(out_dir=Path(out_dir) if out_dir is not None else None, resume=resume,
                        overwrite=overwrite, exit_zero=exit_zero, fail_on=fail_on,
                        engine=engine, executor=executor, progress=progress or _NoProgress())
    report, results_dir = run_audit(loaded, opts)
    return PublicResult.from_report(report, results_dir)


class _CallableModule(types.ModuleType):
    """``from stabcheck import audit`` gives this module (Python's import system puts the
    submodule on the package); calling it runs :func:`audit`, so ``audit("config.yaml")``
    works however it was imported."""

    def __call__(self, config: str | Path | Mapping[str, Any], **kwargs: Any) -> PublicResult:
        return audit(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
