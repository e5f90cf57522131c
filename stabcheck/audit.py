"""Run an audit: config → plan → engine → journal → diagnosis → verdict.

This module wires the stages together and owns the side effects of a run (the results
directory, the journal, progress). It knows nothing about terminals or output formats.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from stabcheck import nodynamo
from stabcheck.api import AuditResult as PublicResult
from stabcheck.api import config_overrides
from stabcheck.config import LoadedConfig, load_config, load_mapping
from stabcheck.engine import Engine, EngineSettings, get_engine
from stabcheck.engine.curvature import PROBE_BATCH, init_curvature
from stabcheck.engine.curvature.init import plan_for
from stabcheck.engine.failures import free_memory
from stabcheck.engine.vectorized import select_engine
from stabcheck.errors import AuditNotCarriedOut, ConfigError, user_code_exits, writing
from stabcheck.executors import choose_executor
from stabcheck.executors.base import DEFAULT_GRACE_S, Executor, Interrupts, Job
from stabcheck.init_phase import run_init_phase
from stabcheck.journal import (
    LOCK_NAME,
    REPORT_NAME,
    VERDICT_KEYS,
    Journal,
    JournalContents,
    lock_directory,
    read_journal,
)
from stabcheck.phases import CohortWatch
from stabcheck.plan import Cohort, config_digest, make_cohorts, plan_probes
from stabcheck.problem import build_problem
from stabcheck.project import project_defaults
from stabcheck.records import ProbeRecord
from stabcheck.report.json_report import write_atomic
from stabcheck.result import AuditResult, build_result, environment

DEFAULT_RESULTS_ROOT = Path("stabcheck-results")
# Above this many probes an audit needs ``large_sweep`` (``--large-sweep``): a sweep that size
# is far more often a typo (a range with num: 1000 times 20 seeds) than a plan.
MAX_PROBES = 10_000
_MAX_DIR_NAME = 80  # characters of the config's name kept in a default results directory


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

    def phase(self, text: str) -> None:
        """What the audit is doing now (init checks, training, ...)."""

    def stop(self) -> None:
        """The audit ended (normally or not)."""


class _NoProgress:
    def start(self, total: int, done: int, steps_per_probe: int) -> None: ...
    def steps(self, n: int) -> None: ...
    def probe_done(self, record: ProbeRecord) -> None: ...
    def note(self, message: str) -> None: ...
    def phase(self, text: str) -> None: ...
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
    executor: str | Executor = "auto"  # auto | local | processes | ..., or an executor object
    workers: int | None = None  # processes executor: how many workers (None: per GPU / 1)
    ray_address: str | None = None  # ray executor: auto | ray://host:port (None: local)
    grace_s: float = DEFAULT_GRACE_S  # after a first Ctrl-C, how long running probes may finish
    large_sweep: bool = False  # allow more than MAX_PROBES probes


def default_out_dir(name: str) -> Path:
    """``stabcheck-results/<name>-<YYYYmmdd-HHMMSS>``: a new directory per run."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:_MAX_DIR_NAME].strip("-.") or "audit"
    return DEFAULT_RESULTS_ROOT / f"{safe}-{datetime.now():%Y%m%d-%H%M%S}"


def run_audit(loaded: LoadedConfig, options: AuditOptions | None = None) -> tuple[AuditResult,
                                                                                   Path]:
    """Run the audit ``loaded`` describes. Returns the result and the results directory.

    A first Ctrl-C (SIGINT) stops scheduling and lets the running probes finish for
    ``options.grace_s`` seconds; a second one, or the end of the grace period, stops at once.
    Either way the probes already journaled are kept and the result is marked incomplete
    (exit 130). The results directory is locked for the whole run: a second audit (or a
    ``--resume``) on it while this one runs is refused.
    """
    options = options or AuditOptions()
    cfg = loaded.config
    started = time.perf_counter()
    nodynamo.install()  # eager torch.optim imports no torch._dynamo (stabcheck.nodynamo)
    probes = plan_probes(cfg)
    check_sweep_size(len(probes), cfg.probe.steps, options.large_sweep)
    out_dir = options.out_dir or default_out_dir(cfg.name)
    created = not out_dir.exists()
    # The lock comes first: a second audit on a busy directory is refused before it runs any
    # user code (which may itself be slow or hang).
    with lock_directory(out_dir):
        try:
            options.progress.phase("building the model and data")
            with user_code_exits("building the model, data or loss"):
                problem = build_problem(loaded)  # imports user code, after the schema validated
            for note in problem.notes:
                options.progress.note(note)
        except BaseException:
            if created:  # leave no empty results directory behind a config error
                (out_dir / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    out_dir.rmdir()
            raise
        setup_s = time.perf_counter() - started
        digest = config_digest(cfg)
        header: dict[str, Any] = {
            "config_digest": digest, "config": cfg.model_dump(mode="json"),
            "config_path": str(loaded.path), "planned": len(probes),
            "environment": environment(str(problem.device)),
        }
        if options.resume:
            journal, contents = Journal.resume(out_dir, digest)
            _current_verdict_settings(journal, contents, header["config"], options.progress)
            done = set(contents.probes)
        else:
            journal = Journal.create(out_dir, header, overwrite=options.overwrite)
            contents = JournalContents(header=header)
            done = set()
            for note in problem.notes:  # what was converted on the user's behalf, in the report
                journal.append_event({"event": "data", "message": note})
        result = _execute(loaded, options, problem, probes, digest, journal, contents, done,
                          setup_s, started)
    return result, out_dir


def check_sweep_size(n: int, steps: int, allowed: bool) -> None:
    """Refuse a sweep over :data:`MAX_PROBES` probes unless ``allowed`` (``--large-sweep``)."""
    if n > MAX_PROBES and not allowed:
        raise ConfigError(f"the sweep has {n:,} probes ({n * steps:,} training steps in all), "
                          f"over the limit of {MAX_PROBES:,}: shrink sweep.learning_rates, "
                          "sweep.seeds or sweep.batch_sizes, or pass --large-sweep to run it")


def _current_verdict_settings(journal: Journal, contents: JournalContents,
                              config: dict[str, Any], progress: Progress) -> None:
    """On ``--resume``, the verdict settings are the current config's, never the journal's.

    ``fail_on``, ``thresholds``, ``target_lr``, ``target_batch_size`` and ``name`` change no
    probe (they are outside the config digest), so the journaled probes are reused and the
    verdict is recomputed under the current values; a ``settings`` line records them so that
    ``report`` and ``compare`` later judge the same way.
    """
    old = contents.header.get("config", {})
    now = {key: config.get(key) for key in VERDICT_KEYS}
    changed = [key for key in VERDICT_KEYS if old.get(key) != now[key]]
    if not changed:
        return
    journal.append_settings(now)
    message = (f"resumed with changed verdict settings ({', '.join(changed)}): the verdict "
               "uses the current config's")
    journal.append_event({"event": "settings", "message": message})
    contents.header.setdefault("config", {}).update(now)
    progress.note(message)


def _execute(loaded: LoadedConfig, options: AuditOptions, problem: Any, probes: list[Any],
             digest: str, journal: Journal, contents: JournalContents, done: set[str],
             setup_s: float, started: float) -> AuditResult:
    cfg = loaded.config
    out_dir = journal.directory
    todo = [p for p in probes if p.key(digest) not in done]
    keys = {p.index: p.key(digest) for p in probes}
    engine = options.engine
    settings = EngineSettings.from_config(cfg.probe)
    executor = options.executor if not isinstance(options.executor, str) else \
        choose_executor(options.executor, settings.timeout_s, problem.device, options.workers,
                        options.ray_address, cohorts=len(make_cohorts(todo)),
                        probe_steps=len(todo) * settings.steps)
    progress = options.progress
    control = Interrupts(grace_s=options.grace_s)
    interrupted = False
    escaped: BaseException | None = None  # SystemExit (or another BaseException) from user code
    if len(probes) > MAX_PROBES:
        progress.note(f"large sweep: {len(probes):,} probes x {settings.steps} steps = "
                      f"{len(probes) * settings.steps:,} training steps")
    progress.start(len(probes), len(probes) - len(todo), settings.steps)
    with control.installed():
        try:
            data = problem.data.to(problem.device)
            cohorts = make_cohorts(todo)
            watch = CohortWatch(cohorts, together=False)  # (set once the engine is chosen)

            def on_record(record: ProbeRecord) -> None:
                with control.critical():  # a forced stop never cuts a journal line
                    journal.append_probe(record)  # durable before anything else happens
                done.add(record.key)
                watch.finished(record.index)
                control.waiting_for = watch.waiting_for()
                progress.probe_done(record)

            def on_init(seed: int, report: dict[str, Any]) -> None:
                with control.critical():
                    journal.append_init(seed, report)

            def init_phase(text: str) -> None:  # "init checks, seed 1", "curvature at init, ..."
                progress.phase(text)
                control.waiting_for = f"the {text}"

            def on_event(message: str) -> None:
                with control.critical():
                    journal.append_event({"event": "curvature", "message": message})
                progress.note(message)

            # Init checks per seed; what does not depend on the seed (the curvature budget,
            # the noise scale) once per audit (stabcheck.init_phase). The budget is that of
            # the whole grid, so that a resumed audit plans as the uninterrupted one did.
            pending = sorted({p.seed for p in probes} - set(contents.init))
            run_init_phase(problem, cfg, data, pending,
                           float(sum(p.batch_size for p in probes) * settings.steps),
                           contents.init, on_init, on_event, init_phase,
                           lambda: control.stop_requested, settings.timeout_s)
            if problem.step_fn is not None:
                # Custom steps always run sequentially (stabcheck.engine.custom).
                engine = get_engine("custom-step")
                progress.note("custom training step: runs on the sequential engine")
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

            if not executor.in_process:
                # Probes run in workers with their own copy: give this one's device memory back.
                data = problem.data
                free_memory(problem.device)
            watch.together = bool(getattr(engine, "runs_cohort_together", False))

            def on_cohort(cohort: Cohort) -> None:
                progress.phase(watch.started(cohort))
                control.waiting_for = watch.waiting_for()

            job = Job(loaded=loaded, problem=problem, data=data, engine=engine,
                      settings=settings, keys=keys, setup_s=setup_s, on_note=on_note,
                      on_cohort=on_cohort)
            control.waiting_for = watch.waiting_for()  # no longer the init checks
            if not control.stop_requested:
                progress.phase(f"training {len(todo)} probes in {len(cohorts)} cohort(s): "
                               f"engine {getattr(engine, 'name', type(engine).__name__)}, "
                               f"executor {type(executor).__name__}")
                executor.run(job, cohorts, on_record, progress.steps, control)
            control.settle()
            # A Ctrl-C that came after the last probe had finished interrupted nothing.
            interrupted = control.stop_requested and len(done) < len(probes)
        except KeyboardInterrupt:
            interrupted = True
        except Exception:
            raise
        except BaseException as exc:  # user code's sys.exit() is never a pass
            escaped = exc
        finally:
            control.settle()  # from here on Ctrl-C no longer cuts the report short
            progress.stop()
        if interrupted or escaped is not None:
            message = ("interrupted by the user; the report is INCOMPLETE" if escaped is None
                       else f"user code raised {_describe_exit(escaped)} during the probes; "
                       "the report is INCOMPLETE")
            with control.critical():
                journal.append_event({"event": "interrupted", "message": message})
        progress.phase("report")
        result = finish(out_dir, read_journal(out_dir), interrupted=interrupted,
                        exit_zero=options.exit_zero, fail_on=options.fail_on,
                        wall_time_s=time.perf_counter() - started)
    if escaped is not None:
        raise AuditNotCarriedOut(f"user code raised {_describe_exit(escaped)} during the "
                                 f"probes: the audit was not carried out ({len(done)} of "
                                 f"{len(probes)} probes journaled; partial report in "
                                 f"{out_dir / REPORT_NAME})")
    return result


def _describe_exit(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (sys.exit)"
    return type(exc).__name__


def predict_only(loaded: LoadedConfig) -> dict[str, Any]:
    """``stabcheck audit --predict-only``: curvature at init per seed, no probe training.

    Returns plain data: per seed the init curvature report, and per batch size the predicted
    LR ceiling (the smallest over seeds: the conservative one).
    """
    cfg = loaded.config
    started = time.perf_counter()
    nodynamo.install()
    with user_code_exits("building the model, data or loss"):
        problem = build_problem(loaded)
    data = problem.data.to(problem.device)
    full = cfg.probe.curvature_batch or PROBE_BATCH
    # No probes follow, so no budget; the noise scale is measured once (on the first seed).
    plan = plan_for(problem, cfg.sweep.seeds, data.n, cfg.sweep.batch_sizes, None, full)
    seeds = {str(seed): init_curvature(problem, seed, data, cfg.sweep.batch_sizes, full,
                                       plan=plan, noise=i == 0)
             for i, seed in enumerate(cfg.sweep.seeds)}
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
    with writing(out_dir / REPORT_NAME):
        write_atomic(out_dir / REPORT_NAME, render(result, "json"))
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
