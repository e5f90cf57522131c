"""The sequential reference engine: one probe at a time, a plain PyTorch training loop.

This is the engine every other one is checked against, so it is written to be read. One
step, top to bottom:

1. set the (warmed-up) learning rate; gather this step's batch by index, on the device;
2. forward under autocast (bf16/fp16 when asked) and compute the loss;
3. backward; with fp16, unscale the gradients *before* measuring or clipping them;
4. measure the global and per-layer gradient norms (before clipping), then clip;
5. step the optimizer, then measure how far the weights moved relative to their size;
6. write all of it into the on-device statistics buffer: no ``.item()``, no host sync.

Every ``flush_every`` steps the buffer is copied to the host in one go and checked for
non-finite values; a probe that went non-finite stops there, and the step it happened at is
replayed with hooks to name the module where the NaN/Inf first appeared.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sysconfig
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stabcheck.engine.instruments import (
    CLIP_EPS,
    COL,
    LayerMap,
    StatBuffer,
    batch_order,
    first_nonfinite,
    seed_everything,
    to_jsonable,
    warmup_factors,
)
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Problem, TensorData
from stabcheck.records import ProbeRecord

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineSettings:
    """The ``probe:`` section, as the engines use it."""

    steps: int
    grad_clip: float | None = None
    warmup_steps: int = 0
    dtype: str = "float32"
    flush_every: int = 50
    timeout_s: float | None = None
    curvature_every: int | None = None
    curvature_batch: int | None = None

    @classmethod
    def from_config(cls, probe: Any) -> EngineSettings:
        """Build from a :class:`stabcheck.config.ProbeSection`."""
        return cls(steps=probe.steps, grad_clip=probe.grad_clip, warmup_steps=probe.warmup_steps,
                   dtype=probe.dtype, flush_every=probe.flush_every, timeout_s=probe.timeout_s,
                   curvature_every=probe.curvature_every,
                   curvature_batch=probe.curvature_batch)


class ProbeTimeout(Exception):
    """The probe ran past ``probe.timeout_s``."""


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
        seed_everything(spec.seed)
        self.model = problem.build_model().to(self.device)
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params: list[torch.Tensor] = [p for _, p in named]
        self.layers = LayerMap.from_names(n for n, _ in named)
        self.layer_index = self.layers.index_tensor(self.device)
        self.optimizer = problem.make_optimizer([p for _, p in named], spec.lr)
        self.order = batch_order(spec.seed, data.n, spec.batch_size, settings.steps).to(self.device)
        self.lrs = (spec.lr * warmup_factors(settings.steps, settings.warmup_steps)).tolist()
        self.scaler = torch.amp.GradScaler(self.device.type) if settings.dtype == "float16" \
            else None
        self.buffer = StatBuffer(settings.steps, len(self.layers.names), self.device)
        self.buffer.stats[:, COL["lr"]] = torch.tensor(self.lrs, device=self.device)
        with torch.no_grad():
            self.param_norm = self._norm(self.params)

    @staticmethod
    def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        # Accumulate in float64: a float32 sum of squares overflows once elements pass ~1e19
        # and would report a finite (if exploding) gradient as infinite.
        norms = torch._foreach_norm(list(tensors), 2, dtype=torch.float64)
        return torch.stack(list(norms)).square().sum().sqrt()

    def forward_loss(self, step: int) -> torch.Tensor:
        """The loss of step ``step``'s batch under the current weights."""
        batch = self.data.batch(self.order[step])
        with autocast(self.device, self.settings.dtype):
            loss = self.problem.loss_fn(self.model, batch)
        return loss.float()

    def step(self, t: int) -> None:
        """Run training step ``t`` and record its statistics in the buffer."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[t]
        loss = self.forward_loss(t)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # measure and clip true, unscaled gradients

        with torch.no_grad():
            owners = [i for i, p in enumerate(self.params) if p.grad is not None]
            grads = [self.params[i].grad for i in owners]
            grad_sq = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)).square()  # type: ignore[arg-type]
            layer_sq = torch.zeros(len(self.layers.names), device=self.device,
                                   dtype=torch.float64)
            layer_sq.index_add_(0, self.layer_index[owners], grad_sq)
            grad_norm = grad_sq.sum().sqrt()
            clipped = torch.zeros((), device=self.device)
            clip = self.settings.grad_clip
            if clip is not None:
                # Same rule as torch.nn.utils.clip_grad_norm_: scale by clip / (norm + eps).
                coef = (clip / (grad_norm + CLIP_EPS)).clamp(max=1.0)
                torch._foreach_mul_(grads, coef.float())  # type: ignore[arg-type]
                clipped = (coef < 1.0).float()
            before = torch._foreach_mul(self.params, 1.0)  # copy, to measure the update

        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = (~torch.isfinite(grad_norm)).float()
        else:
            self.optimizer.step()
            skipped = torch.zeros((), device=self.device)

        with torch.no_grad():
            update_norm = self._norm(torch._foreach_sub(self.params, list(before)))
            new_norm = self._norm(self.params)
            ratio = update_norm / self.param_norm.clamp(min=1e-30)
            self.param_norm = new_norm
            row = torch.stack([loss.detach().float(), grad_norm.float(), clipped.float(),
                               ratio.float(), new_norm.float()])
            self.buffer.stats[t, : row.numel()] = row
            self.buffer.stats[t, COL["skipped"]] = skipped
            self.buffer.layers[t] = layer_sq.sqrt().float()

    def snapshot(self, step: int) -> dict[str, Any]:
        """Model, optimizer, scaler and RNG state, to replay from ``step`` later."""
        return {
            "step": step,
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "param_norm": self.param_norm.clone(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Go back to a :meth:`snapshot`."""
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        if self.scaler is not None and snap["scaler"] is not None:
            self.scaler.load_state_dict(snap["scaler"])
        self.param_norm = snap["param_norm"].clone()
        torch.set_rng_state(snap["rng"])
        if snap["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(snap["cuda_rng"])


def mark_nonfinite(record: ProbeRecord, probe: SequentialProbe, snap: dict[str, Any],
                   bad_step: int, bad: Any) -> None:
    """Record where a probe first went non-finite (``bad``, from :func:`first_nonfinite`) and
    replay that step from ``snap`` to name the module where it happened."""
    from stabcheck.engine.nanlocate import locate_nonfinite

    record.outcome = "nonfinite"
    record.first_nonfinite_step = bad_step
    record.nonfinite_what = bad.what
    record.nonfinite_kind = bad.kind
    record.nonfinite_module = locate_nonfinite(probe, snap, bad_step, bad.what)


def run_probe(problem: Problem, spec: ProbeSpec, settings: EngineSettings, key: str,
              data: TensorData | None = None,
              on_steps: Callable[[int], None] | None = None) -> ProbeRecord:
    """Run one probe to completion (or divergence, error, timeout) and return its record.

    ``on_steps(n)`` is called at every flush with the number of steps just completed.
    """
    from stabcheck.engine.curvature import CurvatureTracker, drop_after

    data = data if data is not None else problem.data.to(problem.device)
    started = time.perf_counter()
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
        every = settings.curvature_every
        if every:
            tracker.measure(0, probe.lrs[0])  # sharpness at init, before any step
        snap = probe.snapshot(0)
        deadline = started + settings.timeout_s if settings.timeout_s else None
        for t in range(settings.steps):
            probe.step(t)
            done = t + 1
            if deadline is not None and time.perf_counter() > deadline:
                raise ProbeTimeout(f"probe ran past probe.timeout_s={settings.timeout_s:g}s "
                                   f"at step {t}")
            if done % settings.flush_every == 0 or done == settings.steps:
                chunk, _ = probe.buffer.flush(done)
                if on_steps is not None:
                    on_steps(chunk.shape[0])
                bad = first_nonfinite(chunk)
                if bad is not None:
                    bad_step = done - chunk.shape[0] + bad.row
                    done = bad_step + 1
                    mark_nonfinite(record, probe, snap, bad_step, bad)
                    break
                snap = probe.snapshot(done)
            if every and done % every == 0:
                tracker.measure(done, probe.lrs[min(done, settings.steps - 1)])
    except ProbeTimeout as exc:
        record.outcome = "timeout"
        record.error = {"type": "Timeout", "message": str(exc), "where": None}
    except Exception as exc:  # the probe fails; the audit goes on
        record.outcome = "oom" if is_oom(exc) else "error"
        record.error = describe_exception(exc)
    record.steps_run = done
    if tracker is not None:
        with contextlib.suppress(Exception):
            record.curvature = tracker.finish(tracked=bool(settings.curvature_every))
            drop_after(record.curvature, record.first_nonfinite_step)
    if probe is not None:
        with contextlib.suppress(Exception):  # after an OOM even a copy may fail
            probe.buffer.flush(max(done, probe.buffer.flushed))
        fill_trace(record, probe.buffer.host_stats[:done], probe.buffer.host_layers[:done])
    del probe, tracker
    free_memory(problem.device)
    record.wall_time_s = time.perf_counter() - started
    return record


def fill_trace(record: ProbeRecord, stats: np.ndarray, layers: np.ndarray) -> None:
    """Copy host statistics into the record as JSON-ready lists."""
    from stabcheck.engine.instruments import STAT_COLUMNS

    record.trace = {name: to_jsonable(stats[:, i]) for i, name in enumerate(STAT_COLUMNS)}
    record.layer_grad_norms = to_jsonable(layers)


def is_oom(exc: BaseException) -> bool:
    """CUDA (or MPS/CPU allocator) out-of-memory, whatever class torch raised it as."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    """Release what a finished (or failed) probe held, so the next one has room.

    On the CPU reference counting has already freed the tensors, and a full ``gc.collect``
    costs ~0.1-0.2 s in a process that imported torch (more than a whole small probe), so it
    only runs where cached device memory has to be handed back.
    """
    if device.type != "cpu":
        gc.collect()
    if device.type == "cuda":
        # After a device-side assert the context is unusable and this raises too; the probe's
        # own error is the one worth reporting (the process executor replaces the worker).
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


_NOT_USER_CODE = tuple(
    str(Path(p).resolve()) for p in (
        Path(__file__).parents[1], Path(torch.__file__).parent, sysconfig.get_paths()["stdlib"])
)


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Type, message and the innermost frame of *user* code (not torch, stabcheck or stdlib)."""
    where = None
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if str(Path(frame.filename).resolve()).startswith(_NOT_USER_CODE):
            continue
        where = f"{frame.filename}:{frame.lineno} in {frame.name}"
        break
    message = str(exc).strip().splitlines()
    return {"type": type(exc).__name__, "message": message[0] if message else "",
            "where": where}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)
