"""The sequential reference engine: one probe at a time, a plain PyTorch training loop.

This is the engine every other one is checked against, so it is written to be read: one
step (:meth:`SequentialProbe.step`) reads top to bottom like nanoGPT's loop, phase by phase,
and writes what it measured into the statistics buffer — a few fused norms per step, with
no host sync (on a CPU they are read where they lie, in host memory; on another device they
stay there); the columns are derived from them at each flush
(:mod:`stabcheck.engine.stepstats`). The loop around it (:func:`run_probe`) follows the one
schedule every engine asks (:class:`~stabcheck.engine.loop.Schedule`): every ``flush_every``
steps the buffer is copied to the host and checked for non-finite values; a probe that went
non-finite stops there, and the step it happened at is replayed with hooks to name the module
where the NaN/Inf first appeared (:mod:`stabcheck.engine.nanlocate`).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from stabcheck.engine.base import EngineEvents, EngineSettings, EngineSpec
from stabcheck.engine.curvature.tracker import CurvatureTracker
from stabcheck.engine.failures import (
    ProbeTimeout,
    describe_exception,
    free_memory,
    is_oom,
    timeout_error,
)
from stabcheck.engine.instruments import (
    LayerMap,
    NonFinite,
    batch_order,
    build_model,
    first_nonfinite,
    warmup_factors,
)
from stabcheck.engine.loop import Schedule, finish_record
from stabcheck.engine.nanlocate import locate_nonfinite
from stabcheck.engine.stepstats import NormBuffer
from stabcheck.plan import Cohort, ProbeSpec
from stabcheck.problem import Problem, TensorData
from stabcheck.records import ProbeRecord

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for bf16/fp16; a no-op for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[dtype])


class SequentialProbe:
    """One probe's model, optimizer and data order, steppable one instrumented step at a time."""

    def __init__(self, problem: Problem, spec: ProbeSpec, settings: EngineSettings,
                 data: TensorData) -> None:
        self.problem, self.spec, self.settings, self.data = problem, spec, settings, data
        self.device = problem.device
        self.model = build_model(problem, spec.seed)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params: list[torch.Tensor] = [p for _, p in named]
        self.layers = LayerMap.from_names(n for n, _ in named)
        self.optimizer = problem.make_optimizer([p for _, p in named], spec.lr)
        self.order = batch_order(spec.seed, data.n, spec.batch_size, settings.steps).to(self.device)
        self.lrs = (spec.lr * warmup_factors(settings.steps, settings.warmup_steps)).tolist()
        # Dynamic loss scaling for float16 only; disabled, every call below is a pass-through.
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=settings.dtype == "float16")
        self.buffer = NormBuffer(self.params, self.layers, settings.steps, self.device,
                                 settings.grad_clip, loss_scaling=self.scaler.is_enabled())
        self.buffer.fill("lr", torch.tensor(self.lrs, device=self.device))

    def forward_loss(self, step: int) -> torch.Tensor:
        """The loss of step ``step``'s batch under the current weights."""
        batch = self.data.batch(self.order[step])
        with autocast(self.device, self.settings.dtype):
            loss = self.problem.loss_fn(self.model, batch)
        return loss.float()

    def step(self, t: int) -> None:
        """Run training step ``t`` and record its statistics in the buffer."""
        # The sweep's learning rate, with linear warmup (precomputed per step).
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[t]

        # Forward on this step's batch (gathered by index, on the device), under autocast.
        loss = self.forward_loss(t)

        # Backward; fp16 scales the loss first so that small gradients do not underflow.
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # Unscale before measuring or clipping: thresholds are in true gradient units.
        self.scaler.unscale_(self.optimizer)

        with torch.no_grad():
            # Gradient norms per parameter, before clipping changes them (global and
            # per-layer norms are summed from these at flush time); with clipping, taken in
            # float64 and the gradients scaled as torch.nn.utils.clip_grad_norm_ does.
            if self.settings.grad_clip is None:
                grad_norms = self.buffer.grad_norms()
            else:
                grad_norms, _ = self.buffer.clip_grads(self.settings.grad_clip)

        # Update; with fp16, GradScaler skips the step when the gradients overflowed (and
        # lowers its scale), which is loss scaling at work, not divergence.
        self.scaler.step(self.optimizer)
        self.scaler.update()

        with torch.no_grad():
            # The update's norm (the weights against their copy after the step before), the
            # new weights' norm and the loss into the step's row of the statistics buffer;
            # the columns are derived from it at the next flush.
            self.buffer.record(t, grad_norms, loss)

    def snapshot(self, step: int) -> dict[str, Any]:
        """Model, optimizer, scaler and RNG state, to replay from ``step`` later."""
        return {
            "step": step,
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Go back to a :meth:`snapshot`."""
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.scaler.load_state_dict(snap["scaler"])
        self.buffer.weights_loaded()
        torch.set_rng_state(snap["rng"])
        if snap["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(snap["cuda_rng"])


def mark_nonfinite(record: ProbeRecord, probe: SequentialProbe, snap: dict[str, Any],
                   bad_step: int, bad: NonFinite) -> None:
    """Record where a probe first went non-finite (``bad``, from :func:`first_nonfinite`) and
    replay that step from ``snap`` to name the module where it happened."""
    record.outcome = "nonfinite"
    record.first_nonfinite_step = bad_step
    record.nonfinite_what = bad.what
    record.nonfinite_kind = bad.kind
    record.nonfinite_module = locate_nonfinite(probe, snap, bad_step, bad.what)


def run_probe(problem: Problem, spec: ProbeSpec, settings: EngineSettings, key: str,
              data: TensorData | None = None,
              events: EngineEvents | None = None) -> ProbeRecord:
    """Run one probe to completion (or divergence, error, timeout) and return its record.

    ``events.steps(n)`` is called at every flush with the number of steps just completed.
    """
    data = data if data is not None else problem.data.to(problem.device)
    schedule = Schedule(settings)
    record = ProbeRecord.for_probe(spec, key, settings.steps, "sequential")
    probe: SequentialProbe | None = None
    tracker: CurvatureTracker | None = None
    done = 0  # steps finished so far; on an exception, these are kept
    try:
        probe = SequentialProbe(problem, spec, settings, data)
        record.layer_names = list(probe.layers.names)
        tracker = CurvatureTracker(probe.model, problem.loss_fn, data, probe.optimizer,
                                   spec.seed, probe.device,
                                   settings.curvature_batch or spec.batch_size)
        if settings.curvature_every:
            tracker.measure(0, probe.lrs[0])  # sharpness at init, before any step
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
            if schedule.curvature_due(done):
                tracker.measure(done, probe.lrs[min(done, settings.steps - 1)])
    except ProbeTimeout as exc:
        record.outcome = "timeout"
        record.error = timeout_error(str(exc))
    except Exception as exc:  # the probe fails; the audit goes on
        record.outcome = "oom" if is_oom(exc) else "error"
        record.error = describe_exception(exc)
    if tracker is not None:
        with contextlib.suppress(Exception):
            record.curvature = tracker.finish(tracked=bool(settings.curvature_every))
    stats = layers = None
    if probe is not None:
        with contextlib.suppress(Exception):  # after an OOM even a copy may fail
            probe.buffer.flush(max(done, probe.buffer.flushed))
        stats, layers = probe.buffer.host_stats, probe.buffer.host_layers
    del probe, tracker
    free_memory(problem.device)
    if stats is None or layers is None:  # the probe could not even be built
        record.steps_run = done
        record.wall_time_s = schedule.elapsed()
        return record
    return finish_record(record, stats, layers, done, schedule.elapsed())


class SequentialEngine:
    """The reference engine: probes one after another.

    ``fallback_reason`` says why it runs instead of the vectorized engine; every record then
    carries it as a note.
    """

    name = "sequential"
    runs_cohort_together = False

    def __init__(self, fallback_reason: str | None = None) -> None:
        self.fallback_reason = fallback_reason
        self.note = f"sequential engine used: {fallback_reason}" if fallback_reason else None

    @property
    def spec(self) -> EngineSpec:
        options = {"fallback_reason": self.fallback_reason} if self.fallback_reason else {}
        return EngineSpec(self.name, options)

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, events: EngineEvents) -> None:
        """Run every probe of ``cohort``, one at a time."""
        for spec in cohort.probes:
            record = run_probe(problem, spec, settings, keys[spec.index], data, events)
            if self.note:
                record.notes.append(self.note)
            events.record(record)

