"""Probes trained by the user's own step (``step:``, :mod:`stabcheck.stepfn`).

A custom step always runs on this sequential path: one probe at a time, the step called as
written. What the reference engine measures is measured the same way, through hooks rather
than by owning the loop body: every ``optimizer.step()`` the user calls is preceded by a
step pre-hook that takes the gradient norm of that optimizer's parameters (global and per
layer) *before* clipping, applies ``probe.grad_clip`` to them, and notes whether it clipped.
The update ratio, the parameter norm and the loss(es) are then written into the same
statistics buffer by column name (:class:`~stabcheck.engine.stats.StatBuffer`), flushed on
the same schedule (:class:`~stabcheck.engine.loop.Schedule`), and a probe that went
non-finite is replayed to name the module where it started (the helpers of
:mod:`stabcheck.engine.nanlocate`, with hooks on the whole user step). Per-optimizer gradient
norms and named losses go into the trace as ``grad_norm/<optimizer>`` and ``loss/<name>``.
Curvature is not tracked: its Hessian-vector products need a plain loss function.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Any

import numpy as np
import torch

from stabcheck.engine.base import EngineEvents, EngineSettings, EngineSpec
from stabcheck.engine.failures import (
    ProbeTimeout,
    describe_exception,
    free_memory,
    is_oom,
    timeout_error,
)
from stabcheck.engine.instruments import NonFinite, first_nonfinite, to_jsonable
from stabcheck.engine.loop import Schedule, finish_record
from stabcheck.engine.nanlocate import LOSS, _finite, _first_nonfinite_parameter, _name_of
from stabcheck.engine.sequential import SequentialProbe, autocast
from stabcheck.engine.stepstats import Norm
from stabcheck.plan import Cohort, ProbeSpec
from stabcheck.problem import Problem, TensorData
from stabcheck.records import ProbeRecord
from stabcheck.stepfn import (
    StepContext,
    StepReturnError,
    build_optimizers,
    losses_of,
    total_loss,
)

NOTE = "custom training step: runs on the sequential engine (one probe at a time)"


class CustomStepProbe(SequentialProbe):
    """A :class:`SequentialProbe` whose step is the user's, with its optimizers measured."""

    def __init__(self, problem: Problem, spec: ProbeSpec, settings: EngineSettings,
                 data: TensorData) -> None:
        super().__init__(problem, spec, settings, data)
        assert problem.step_fn is not None
        self.step_fn = problem.step_fn
        self.optimizers = build_optimizers(self.model, problem.step_groups,
                                           problem.make_optimizer, spec.lr)
        self.optimizer = next(iter(self.optimizers.values()))
        index = {id(p): i for i, p in enumerate(self.params)}
        self.owned = {name: [index[id(p)] for p in opt.param_groups[0]["params"]
                             if id(p) in index] for name, opt in self.optimizers.items()}
        # Per optimizer, the gradient norm its step saw (as clipping compared it with grad_clip).
        self.opt_norms = torch.full((settings.steps, len(self.optimizers)), float("nan"),
                                    dtype=torch.float64, device=self.device)
        self.buffer.clip_norms = self.opt_norms  # each optimizer clips by its own norm
        self.buffer.loss_scaling = False  # the user's step does its own, if any
        self.named_losses: dict[str, torch.Tensor] = {}
        self._t, self._stepped = 0, False
        self._grad_norms: list[Norm] = []
        for k, (name, opt) in enumerate(self.optimizers.items()):
            opt.register_step_pre_hook(self._pre_hook(name, k))

    def _pre_hook(self, name: str, k: int) -> Any:
        def hook(_opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
            owners = [i for i in self.owned[name] if self.params[i].grad is not None]
            if not owners:
                return
            with torch.no_grad():
                params = [self.params[i] for i in owners]
                clip = self.settings.grad_clip
                if clip is None:
                    norms = self.buffer.grad_norms(params)
                    total = self.buffer.total(norms)
                else:
                    norms, total = self.buffer.clip_grads(clip, params)
                for i, norm_i in zip(owners, norms, strict=True):
                    self._grad_norms[i] = norm_i
                self.opt_norms[self._t, k] = total
            self._stepped = True
        return hook

    def run_user_step(self, t: int) -> dict[str, torch.Tensor]:
        """Call the user's step on batch ``t`` and return its named losses."""
        batch = self.data.batch(self.order[t])
        ctx = StepContext(t, self.lrs[t], self.device, self.settings.dtype)
        with autocast(self.device, self.settings.dtype):
            result = self.step_fn(self.model, batch, self.optimizers, ctx)
        return losses_of(result)

    def step(self, t: int) -> None:
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = self.lrs[t]
        # What the optimizer hooks measure this step; a parameter no optimizer stepped
        # counts 0 in the gradient norms.
        self._t, self._stepped = t, False
        self._grad_norms = [self.buffer.zero_norm] * len(self.params)
        losses = self.run_user_step(t)
        if not self._stepped:
            raise StepReturnError("the training step never called optimizer.step() on any of "
                                  f"its optimizers ({', '.join(self.optimizers)})")
        for name, value in losses.items():
            if name not in self.named_losses:
                self.named_losses[name] = torch.full((self.settings.steps,), float("nan"),
                                                     device=self.device)
            self.named_losses[name][t] = value
        with torch.no_grad():
            self.buffer.record(t, self._grad_norms, total_loss(losses))

    def snapshot(self, step: int) -> dict[str, Any]:
        snap = super().snapshot(step)
        snap["optimizers"] = {n: copy.deepcopy(o.state_dict()) for n, o in self.optimizers.items()}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        super().restore(snap)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(snap["optimizers"][name])

    def series(self, steps_run: int) -> dict[str, list[float | None]]:
        """Per-optimizer gradient norms and named losses, for the record's trace."""
        out = {f"grad_norm/{name}": to_jsonable(self.opt_norms[:steps_run, k].cpu().numpy())
               for k, name in enumerate(self.optimizers)}
        if len(self.named_losses) > 1 or "loss" not in self.named_losses:
            out.update({f"loss/{name}": to_jsonable(v[:steps_run].cpu().numpy())
                        for name, v in self.named_losses.items()})
        return out


def locate(probe: CustomStepProbe, snap: dict[str, Any], bad_step: int,
           what: str | None) -> str | None:
    """The module where the NaN/Inf of ``bad_step`` started: replayed from ``snap``, the
    step is run once more with forward and backward hooks on every module (its updates
    suppressed unless the parameters themselves went non-finite)."""
    try:
        probe.restore(snap)
        for t in range(snap["step"], bad_step):
            probe.step(t)
        if what == "parameter":
            probe.step(bad_step)
            return _first_nonfinite_parameter(probe)
        return _hooked_user_step(probe, bad_step)
    except Exception:  # best effort, as in nanlocate
        return None


def _hooked_user_step(probe: CustomStepProbe, step: int) -> str | None:
    names = _name_of(probe)
    found: list[str] = []

    def forward_hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not found and _finite(inputs) and not _finite([output]):
            found.append(names[id(module)])

    def backward_hook(module: torch.nn.Module, grad_input: Any, grad_output: Any) -> None:
        if not found and _finite(grad_output) and not _finite(grad_input):
            found.append(names[id(module)])

    handles = [m.register_forward_hook(forward_hook) for m in probe.model.modules()]
    for m in probe.model.modules():
        with contextlib.suppress(Exception):
            handles.append(m.register_full_backward_hook(backward_hook))
    saved = {name: opt.step for name, opt in probe.optimizers.items()}
    try:
        for opt in probe.optimizers.values():
            opt.step = lambda closure=None: None  # type: ignore[method-assign,assignment]
        with warnings.catch_warnings():  # hooks on modules whose inputs need no gradient
            warnings.simplefilter("ignore", UserWarning)
            losses = probe.run_user_step(step)
    finally:
        for name, opt in probe.optimizers.items():
            opt.step = saved[name]  # type: ignore[method-assign]
        for h in handles:
            h.remove()
    if found:
        return found[0]
    if not all(bool(torch.isfinite(v)) for v in losses.values()):
        return LOSS
    bad = [probe.layers.names[probe.layers.param_layer[i]] for i, p in enumerate(probe.params)
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    return bad[-1] if bad else None


def mark_nonfinite(record: ProbeRecord, probe: CustomStepProbe, snap: dict[str, Any],
                   bad_step: int, bad: NonFinite) -> None:
    record.outcome = "nonfinite"
    record.first_nonfinite_step = bad_step
    record.nonfinite_what = bad.what
    record.nonfinite_kind = bad.kind
    record.nonfinite_module = locate(probe, snap, bad_step, bad.what)


def run_probe(problem: Problem, spec: ProbeSpec, settings: EngineSettings, key: str,
              data: TensorData, events: EngineEvents | None = None) -> ProbeRecord:
    """One probe with the user's step, on the reference engine's schedule."""
    schedule = Schedule(settings)
    record = ProbeRecord.for_probe(spec, key, settings.steps, "sequential")
    record.notes.append(NOTE)
    probe: CustomStepProbe | None = None
    done = 0
    try:
        probe = CustomStepProbe(problem, spec, settings, data)
        record.layer_names = list(probe.layers.names)
        snap = probe.snapshot(0)
        for t in range(settings.steps):
            probe.step(t)
            done = t + 1
            if schedule.past_deadline():
                raise ProbeTimeout(schedule.timeout_message("probe", t))
            if schedule.flush_due(done):
                chunk, _ = probe.buffer.flush(done)
                if events is not None:
                    events.steps(chunk.shape[0])
                bad = first_nonfinite(chunk)
                if bad is not None:
                    bad_step = done - chunk.shape[0] + bad.row
                    done = bad_step + 1
                    mark_nonfinite(record, probe, snap, bad_step, bad)
                    break
                snap = probe.snapshot(done)
    except ProbeTimeout as exc:
        record.outcome = "timeout"
        record.error = timeout_error(str(exc))
    except Exception as exc:  # the probe fails; the audit goes on
        record.outcome = "oom" if is_oom(exc) else "error"
        record.error = describe_exception(exc)
    if probe is None:
        record.steps_run = done
        record.wall_time_s = schedule.elapsed()
        free_memory(problem.device)
        return record
    stats: np.ndarray | None = None
    with contextlib.suppress(Exception):
        probe.buffer.flush(max(done, probe.buffer.flushed))
        stats = probe.buffer.host_stats
    extra = probe.series(done) if stats is not None else {}
    layers = probe.buffer.host_layers
    del probe
    free_memory(problem.device)
    if stats is None:
        record.steps_run = done
        return record
    finish_record(record, stats, layers, done, schedule.elapsed())
    record.trace.update(extra)
    return record


class CustomStepEngine:
    """Runs probes whose training step is the user's: sequentially, always."""

    name = "custom-step"
    runs_cohort_together = False
    note = NOTE

    @property
    def spec(self) -> EngineSpec:
        return EngineSpec(self.name, {})

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, events: EngineEvents) -> None:
        for spec in cohort.probes:
            events.record(run_probe(problem, spec, settings, keys[spec.index], data, events))
