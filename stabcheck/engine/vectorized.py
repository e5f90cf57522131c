"""The vectorized engine: every probe of a cohort trained at once, as one ``vmap``-ed step.

Probes that share a batch size share every tensor shape, so their models can be stacked:

* each member's model is built exactly as the sequential engine builds it (same seed, same
  initialisation), then its trainable parameters are laid out side by side in **one flat
  ``[P, N]`` tensor** (parameters grouped by layer, so every layer is one contiguous slice);
* the forward pass runs under :func:`torch.func.vmap` (``randomness="different"``) over
  one base module whose parameters are swapped for views of that flat tensor;
* the gradient comes back as one ``[P, N]`` tensor (backward of the summed per-member
  losses by default, or ``vmap(grad)``); norms, clipping and the optimizer update are then a
  handful of whole-cohort tensor operations instead of one per parameter per probe;
* per-member learning rates (warmup included) are ``[steps, P]`` tensors; SGD (momentum,
  dampening, Nesterov, weight decay), Adam and AdamW follow ``torch.optim``'s arithmetic;
* batches are index gathers on the device from a ``[P, steps, B]`` order, the same order
  the sequential engine draws for each seed;
* statistics go into one preallocated ``[P, steps, C]`` device buffer, copied to the host
  every ``flush_every`` steps: no host sync in between. Norms are accumulated in float32
  (3-4x cheaper than float64, equal to ~1e-7);
* at a flush, a member with a non-finite statistic is dropped from the stack (it is not
  stepped again) and its steps since the previous flush are replayed from a snapshot by the
  sequential engine, whose float64 statistics decide the first non-finite step exactly as a
  sequential run would, and whose hooks name the module where NaN/Inf appeared.

The records it produces have exactly the sequential engine's layout (``engine=
"vectorized"``); ``tests/engine/test_vectorized.py`` checks that the traces agree.

What it cannot run falls back to the sequential engine with a one-line reason (see
:func:`select_engine`): custom optimizers, BatchNorm running
statistics, parameters without gradients, anything ``vmap`` refuses (data-dependent
control flow, in-place updates of module state, ...), and models whose trial step under
``vmap`` disagrees with the sequential engine's. A cohort that fails part-way is re-run
sequentially (its unfinished probes only); one that runs out of memory is halved and retried.

Measured by ``benchmarks/bench_engines.py``: backpropagating the summed per-member losses
was as fast as or faster than ``vmap(grad)`` on every grid tried, so it is the default.
"""

from __future__ import annotations

import gc
import inspect
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import grad_and_value, vmap

from stabcheck.engine.curvature import CurvatureTracker
from stabcheck.engine.instruments import (
    CLIP_EPS,
    COL,
    LayerMap,
    StatBuffer,
    batch_order,
    first_nonfinite,
    rng_preserved,
    seed_everything,
    warmup_factors,
)
from stabcheck.engine.sequential import (
    EngineSettings,
    SequentialProbe,
    autocast,
    describe_exception,
    fill_trace,
    is_oom,
    mark_nonfinite,
    run_probe,
)
from stabcheck.plan import Cohort, ProbeSpec, make_cohorts
from stabcheck.problem import Batch, Problem, TensorData
from stabcheck.records import ProbeRecord

RecordSink = Callable[[ProbeRecord], None]
StepSink = Callable[[int], None]

# The keyword arguments each optimizer supports here; any other keyword must keep its default.
_SUPPORTED_KWARGS = {
    "sgd": {"momentum", "dampening", "nesterov", "weight_decay"},
    "adam": {"betas", "eps", "weight_decay", "decoupled_weight_decay"},
    "adamw": {"betas", "eps", "weight_decay"},
}
_OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
                      "adamw": torch.optim.AdamW}
# Keywords that only choose an implementation, not the arithmetic.
_IMPLEMENTATION_KWARGS = {"foreach"}
GRAD_MODES = ("sum", "vmap_grad")


class Ineligible(Exception):
    """The vectorized engine cannot run this problem; the message says why (one line)."""


# --------------------------------------------------------------------------- eligibility


def optimizer_reason(problem: Problem) -> str | None:
    """Why the optimizer cannot be vectorized, or ``None`` when it can."""
    name = problem.optimizer_name
    if name not in _SUPPORTED_KWARGS:
        what = "custom optimizer" if ":" in name else "optimizer"
        return f"{what} {name!r} has no vectorized implementation (sgd, adam and adamw do)"
    defaults = {k: p.default for k, p in
                inspect.signature(_OPTIMIZER_CLASSES[name]).parameters.items()}
    for key, value in problem.optimizer_kwargs.items():
        if key in _SUPPORTED_KWARGS[name] or key in _IMPLEMENTATION_KWARGS:
            continue
        if key in defaults and defaults[key] == value:
            continue
        return f"{name} option {key}={value!r} has no vectorized implementation"
    try:  # options torch.optim itself rejects (e.g. nesterov without momentum)
        problem.make_optimizer([nn.Parameter(torch.zeros(1))], 0.1)
    except Exception as exc:
        return f"the optimizer cannot be built ({type(exc).__name__}: {exc})"
    return None


def model_reason(model: nn.Module) -> str | None:
    """Why this model cannot be stacked, or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            return (f"{name or 'the model'} is a {type(module).__name__} with running statistics, "
                    "which vmap-ed members cannot update")
    return None


def _no_grad_params(problem: Problem, data: TensorData, batch_size: int) -> list[str]:
    """Trainable parameters that one plain backward pass leaves without a gradient."""
    seed_everything(0)
    model = problem.build_model().to(problem.device)
    model.train()
    loss = problem.loss_fn(model, data.batch(torch.arange(min(batch_size, data.n),
                                                          device=problem.device)))
    loss.float().backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def vectorized_reason(problem: Problem, settings: EngineSettings, data: TensorData,
                      probes: Sequence[ProbeSpec]) -> str | None:
    """Why the vectorized engine cannot run this audit, or ``None`` when it can.

    Cheap checks first (optimizer, dtype, model structure), then a trial: two members run one
    real vectorized step, so anything ``vmap`` refuses (data-dependent control flow, ...)
    surfaces here rather than in the middle of the audit.
    """
    if not probes:
        return None
    reason = optimizer_reason(problem)
    if reason:
        return reason
    try:
        seed_everything(0)
        reason = model_reason(problem.build_model())
        if reason:
            return reason
        bs = min(p.batch_size for p in probes)
        missing = _no_grad_params(problem, data, bs)
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            return f"parameter {missing[0]}{more} gets no gradient"
        first = [p for p in probes if p.batch_size == bs][:2]
        one = EngineSettings(steps=1, dtype=settings.dtype, grad_clip=settings.grad_clip)
        trial = _CohortRun(problem, first, one, data)
        trial.step(0)
        vec_stats, vec_layers = trial.buffer.flush(1)
        # The same step by the reference: a model that hides state from the parameter swap
        # (a cached weight, a Python-side counter) runs under vmap but computes differently.
        reference = SequentialProbe(problem, first[0], one, data)
        reference.step(0)
        seq_stats, seq_layers = reference.buffer.flush(1)
        rtol = 1e-3 if settings.dtype == "float32" else 5e-2
        cols = [COL["loss"], COL["grad_norm"]]
        if not (np.allclose(vec_stats[0, 0, cols], seq_stats[0, cols], rtol=rtol, atol=1e-6,
                            equal_nan=True)
                and np.allclose(vec_layers[0, 0], seq_layers[0], rtol=rtol, atol=1e-6,
                                equal_nan=True)):
            return ("a trial step under vmap disagrees with the sequential engine (the model "
                    "may keep state outside its parameters and buffers)")
    except Exception as exc:
        detail = str(exc).strip().splitlines()
        return (f"the model does not run under vmap ({type(exc).__name__}: "
                f"{detail[0][:160] if detail else ''})")
    finally:
        free_memory(problem.device)
    return None


def free_memory(device: torch.device) -> None:
    """Hand cached accelerator memory back between cohorts. On the CPU, reference counting
    already freed the tensors, and a full ``gc.collect`` costs ~0.1 s in a process that has
    imported torch, so nothing is done."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- optimizers


def _col(values: torch.Tensor) -> torch.Tensor:
    """``[P]`` → ``[P, 1]`` float32, to broadcast over the flat ``[P, N]`` parameters."""
    return values.to(torch.float32).unsqueeze(1)


class _VecScaler:
    """``torch.amp.GradScaler``'s dynamic loss scaling, one scale per member.

    Same defaults and rule: scale 2**16; an overflow (a non-finite unscaled gradient) skips
    that member's step and halves its scale; 2000 clean steps in a row double it.
    """

    INIT, GROWTH, BACKOFF, INTERVAL = 2.0 ** 16, 2.0, 0.5, 2000

    def __init__(self, members: int, device: torch.device) -> None:
        self.scale = torch.full((members,), self.INIT, dtype=torch.float32, device=device)
        self.growth = torch.zeros(members, dtype=torch.int32, device=device)

    def inverse(self) -> torch.Tensor:
        """``[P, 1]`` 1/scale, computed as GradScaler does (in float64, then float32)."""
        return self.scale.double().reciprocal().float().unsqueeze(-1)

    def update(self, found_inf: torch.Tensor) -> None:
        """After a step: back off where a member overflowed, grow after a clean streak."""
        streak = torch.where(found_inf, torch.zeros_like(self.growth), self.growth + 1)
        grow = streak >= self.INTERVAL
        scale = torch.where(found_inf, self.scale * self.BACKOFF, self.scale)
        self.scale = torch.where(grow, scale * self.GROWTH, scale)
        self.growth = torch.where(grow, torch.zeros_like(streak), streak)

    def keep(self, rows: torch.Tensor) -> None:
        self.scale, self.growth = self.scale[rows], self.growth[rows]

    def snapshot(self) -> dict[str, Any]:
        return {"scale": self.scale.clone(), "growth": self.growth.clone()}

    @classmethod
    def state_dict(cls, snap: dict[str, Any], pos: int) -> dict[str, Any]:
        """One member's state in ``GradScaler.load_state_dict``'s format."""
        return {"scale": float(snap["scale"][pos]), "growth_factor": cls.GROWTH,
                "backoff_factor": cls.BACKOFF, "growth_interval": cls.INTERVAL,
                "_growth_tracker": int(snap["growth"][pos])}


class _VecOptimizer:
    """SGD / Adam / AdamW over a flat ``[P, N]`` parameter tensor, one learning rate per row.

    The arithmetic follows ``torch.optim``'s single-tensor implementations operation by
    operation; only the learning rate (which the sweep varies) is a per-member tensor. The
    other hyperparameters come from the one ``optimizer:`` section and are shared.
    """

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        defaults = {k: p.default for k, p in
                    inspect.signature(_OPTIMIZER_CLASSES[name]).parameters.items()}
        opts = {**defaults, **kwargs}
        self.kind = "sgd" if name == "sgd" else "adam"
        self.weight_decay = float(opts.get("weight_decay") or 0.0)
        self.decoupled = name == "adamw" or bool(opts.get("decoupled_weight_decay", False))
        self.momentum = float(opts.get("momentum") or 0.0)
        self.dampening = float(opts.get("dampening") or 0.0)
        self.nesterov = bool(opts.get("nesterov", False))
        betas = opts.get("betas") or (0.9, 0.999)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(opts["eps"]) if opts.get("eps") is not None else 1e-8
        self.state: dict[str, torch.Tensor] = {}
        self.t = 0  # optimizer steps taken (Adam's bias correction)
        # With loss scaling, members skip steps on their own: steps taken per member.
        self.count: torch.Tensor | None = None

    def step(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
             neg_lr: torch.Tensor, out: torch.Tensor,
             skip: torch.Tensor | None = None) -> torch.Tensor:
        """Write the updated parameters into ``out`` and return it. ``lr`` is ``[P]``
        float64; ``neg_lr`` is ``-lr`` as a float32 ``[P, 1]`` column. ``grad`` is consumed
        (updated in place). Large outputs go into reused buffers: a fresh multi-megabyte
        allocation per step costs page faults that can double the cost of the update.

        ``skip`` (``[P]`` bool, float16 loss scaling) marks members whose step is skipped:
        their parameters and optimizer state stay as they were, as when ``GradScaler`` skips
        ``optimizer.step()``.
        """
        if skip is not None:
            return self._masked_step(flat, grad, lr, neg_lr, out, skip)
        self.t += 1
        if self.kind == "sgd":
            return self._sgd(flat, grad, neg_lr, out)
        return self._adam(flat, grad, lr, out)

    def _masked_step(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
                     neg_lr: torch.Tensor, out: torch.Tensor,
                     skip: torch.Tensor) -> torch.Tensor:
        if self.count is None:
            self.count = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
        hold = skip.unsqueeze(-1)
        count = self.count + 1  # this step's number, for the members that take it
        if self.kind == "sgd":
            g = grad.add_(flat, alpha=self.weight_decay) if self.weight_decay else grad
            if self.momentum:
                buf = self.state.get("momentum_buffer")
                if buf is None:
                    buf = torch.zeros_like(flat)
                    self.state["momentum_buffer"] = buf
                moved = torch.add(buf.mul(self.momentum), g, alpha=1 - self.dampening)
                moved = torch.where((count == 1).unsqueeze(-1), g, moved)  # first: a copy
                buf.copy_(torch.where(hold, buf, moved))
                g = g.add_(buf, alpha=self.momentum) if self.nesterov else buf
            new = torch.addcmul(flat, g, neg_lr, out=out)
        else:
            new = self._adam(flat, grad, lr, out, hold, count)
        self.count = torch.where(skip, self.count, count)
        return new.copy_(torch.where(hold, flat, new))

    def _sgd(self, flat: torch.Tensor, grad: torch.Tensor, neg_lr: torch.Tensor,
             out: torch.Tensor) -> torch.Tensor:
        g = grad.add_(flat, alpha=self.weight_decay) if self.weight_decay else grad
        if self.momentum:
            buf = self.state.get("momentum_buffer")
            if buf is None:
                buf = g.detach().clone()
                self.state["momentum_buffer"] = buf
            else:
                buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
            g = g.add_(buf, alpha=self.momentum) if self.nesterov else buf
        return torch.addcmul(flat, g, neg_lr, out=out)

    def _adam(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor,
              out: torch.Tensor, hold: torch.Tensor | None = None,
              count: torch.Tensor | None = None) -> torch.Tensor:
        """Adam/AdamW. With ``hold`` (``[P, 1]``, members that skip this step) and ``count``
        (each member's step number), the moments of held members stay as they were and the
        bias corrections are per member."""
        g = grad
        if self.weight_decay and not self.decoupled:
            g = grad.add_(flat, alpha=self.weight_decay)
        if "exp_avg" not in self.state:
            self.state["exp_avg"] = torch.zeros_like(flat)
            self.state["exp_avg_sq"] = torch.zeros_like(flat)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        if hold is None or count is None:
            exp_avg.lerp_(g, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            bias_correction1: float | torch.Tensor = 1 - self.beta1 ** self.t
            root2: float | torch.Tensor = (1 - self.beta2 ** self.t) ** 0.5
        else:
            exp_avg.copy_(torch.where(hold, exp_avg, exp_avg.lerp(g, 1 - self.beta1)))
            moved = exp_avg_sq.mul(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            exp_avg_sq.copy_(torch.where(hold, exp_avg_sq, moved))
            t = count.to(torch.float64)
            bias_correction1 = 1 - self.beta1 ** t
            root2 = _col((1 - self.beta2 ** t).sqrt())
        step_size = lr / bias_correction1
        denom = torch.sqrt(exp_avg_sq, out=g)  # the gradient is not needed any more
        denom.div_(root2).add_(self.eps)
        if self.weight_decay and self.decoupled:
            torch.mul(flat, _col(1 - lr * self.weight_decay), out=out)
        else:
            out.copy_(flat)
        # torch.optim: param.addcdiv_(exp_avg, denom, value=-step_size)
        return out.sub_(torch.mul(exp_avg, _col(step_size)).div_(denom))

    def snapshot(self) -> dict[str, Any]:
        """A copy of the state, to rebuild one member's torch optimizer later."""
        return {"t": self.t, "state": {k: v.clone() for k, v in self.state.items()},
                "count": self.count.clone() if self.count is not None else None}

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every member not in ``rows``."""
        self.state = {k: v[rows] for k, v in self.state.items()}
        if self.count is not None:
            self.count = self.count[rows]

    def load_into(self, optimizer: torch.optim.Optimizer, snap: dict[str, Any], member: int,
                  slices: dict[str, tuple[int, int]], named: dict[str, nn.Parameter]) -> None:
        """Give a real torch optimizer the state of one member at ``snap``."""
        steps = snap["t"] if snap.get("count") is None else int(snap["count"][member])
        if steps == 0:
            return
        for name, (lo, hi) in slices.items():
            param = named[name]
            state = {k: v[member, lo:hi].view_as(param).clone().to(param.device)
                     for k, v in snap["state"].items()}
            if self.kind == "adam":
                state["step"] = torch.tensor(float(steps), dtype=torch.float32)
            optimizer.state[param] = state


# --------------------------------------------------------------------------- one cohort


class _Swap:
    """Run a module with other tensors in place of its parameters and buffers.

    What ``torch.func.functional_call`` does, minus its per-call bookkeeping (which costs
    more than a tiny model's forward): the slots every tensor occupies — several, for tied
    weights — are found once, then each call swaps the tensors in and back out.
    """

    def __init__(self, base: nn.Module) -> None:
        self.base = base
        canonical: dict[int, str] = {}
        for name, t in [*base.named_parameters(), *base.named_buffers()]:
            canonical.setdefault(id(t), name)
        self.slots: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for kind in ("_parameters", "_buffers"):
            for _, module in base.named_modules(remove_duplicate=False):
                for attr, t in getattr(module, kind).items():
                    if t is None or id(t) not in canonical:
                        continue
                    self.slots.setdefault(canonical[id(t)], []).append(
                        (getattr(module, kind), attr))

    def call(self, tensors: dict[str, torch.Tensor], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        saved = []
        try:
            for name, value in tensors.items():
                for store, attr in self.slots[name]:
                    saved.append((store, attr, store[attr]))
                    store[attr] = value
            return self.base(*args, **kwargs)
        finally:
            for store, attr, original in reversed(saved):
                store[attr] = original


class _Bound:
    """``module(*args)`` with one member's parameters (see :class:`_Swap`)."""

    def __init__(self, swap: _Swap, tensors: dict[str, torch.Tensor]) -> None:
        self.swap, self.tensors = swap, tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.swap.call(self.tensors, args, kwargs)

    def __getattr__(self, name: str) -> Any:  # e.g. a loss that reads model.num_classes
        return getattr(self.swap.base, name)


@dataclass(frozen=True)
class _Layout:
    """Where each trainable parameter lives in the flat ``[P, N]`` tensor."""

    names: tuple[str, ...]          # flat order: grouped by layer
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]
    layers: LayerMap                # in the model's own parameter order (as sequential)
    layer_sizes: tuple[int, ...]    # elements per layer, in layers.names order

    @classmethod
    def of(cls, model: nn.Module) -> _Layout:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        layers = LayerMap.from_names(n for n, _ in named)
        order = sorted(range(len(named)), key=lambda i: (layers.param_layer[i], i))
        names = tuple(named[i][0] for i in order)
        shapes = tuple(named[i][1].shape for i in order)
        sizes = tuple(int(named[i][1].numel()) for i in order)
        layer_sizes = [0] * len(layers.names)
        for i, (_, p) in enumerate(named):
            layer_sizes[layers.param_layer[i]] += int(p.numel())
        return cls(names, shapes, sizes, layers, tuple(layer_sizes))

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def slices(self) -> dict[str, tuple[int, int]]:
        out, lo = {}, 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[name] = (lo, lo + size)
            lo += size
        return out


def _compile_requested() -> bool:
    return os.environ.get("STABCHECK_COMPILE", "").strip().lower() in ("1", "true", "yes")


class _CohortRun:
    """The stacked state of one cohort, steppable one instrumented step at a time."""

    def __init__(self, problem: Problem, probes: Sequence[ProbeSpec], settings: EngineSettings,
                 data: TensorData, grad_mode: str = "sum", compile_step: bool = False) -> None:
        self.problem, self.settings, self.data = problem, settings, data
        self.probes = list(probes)
        self.device = device = problem.device
        self.grad_mode = grad_mode
        models = []
        for spec in self.probes:
            seed_everything(spec.seed)  # exactly the sequential engine's initialisation
            model = problem.build_model().to(device)
            model.train()
            models.append(model)
        self.base = models[0]
        self.swap = _Swap(self.base)
        self.layout = layout = _Layout.of(self.base)
        for model in models[1:]:
            if _Layout.of(model).shapes != layout.shapes or \
                    _Layout.of(model).names != layout.names:
                raise Ineligible("members of one cohort built models of different shapes")
        with torch.no_grad():
            self.flat = torch.stack([
                torch.cat([dict(m.named_parameters())[n].detach().reshape(-1)
                           for n in layout.names]) for m in models])
            trainable = set(layout.names)
            consts: dict[str, torch.Tensor] = {}
            for name, _ in [*self.base.named_parameters(), *self.base.named_buffers()]:
                if name not in trainable:
                    consts[name] = torch.stack([_tensor_of(m, name).detach() for m in models])
        self.consts = consts
        self._spare = torch.empty_like(self.flat)   # the next step's parameters go here
        self._delta = torch.empty_like(self.flat)   # and the update, to measure it
        self.flat.requires_grad_(grad_mode == "sum")
        del models[1:]

        P = len(self.probes)
        self.rows = torch.arange(P, device=device)  # buffer row of each live member
        self.members = list(range(P))                # probe index (into self.probes) per row
        steps = settings.steps
        warm = warmup_factors(steps, settings.warmup_steps)
        lrs = torch.tensor([spec.lr for spec in self.probes], dtype=torch.float64)
        # Per member, per step: lr * warmup, as the sequential engine computes it.
        self.lr64 = (warm[:, None] * lrs[None, :]).to(device)            # [steps, P]
        self.neg_lr = (-self.lr64).to(torch.float32).unsqueeze(-1)       # [steps, P, 1]
        self.order = torch.stack([batch_order(s.seed, data.n, s.batch_size, steps)
                                  for s in self.probes], dim=1).to(device)  # [steps, P, B]
        self.optimizer = _VecOptimizer(problem.optimizer_name, problem.optimizer_kwargs)
        # float16: dynamic loss scaling per member, as the sequential engine's GradScaler.
        self.scaler = _VecScaler(P, device) if settings.dtype == "float16" else None
        if self.scaler is not None and grad_mode != "sum":
            raise ValueError("float16 loss scaling needs grad_mode='sum'")
        self.buffer = StatBuffer(steps, len(layout.layers.names), device, leading=(P,))
        self.buffer.stats[:, :, COL["lr"]] = self.lr64.T.float()
        self.buffer.stats[:, :, COL["skipped"]] = 0.0
        self.zeros = torch.zeros(P, device=device)
        with torch.no_grad():
            self.param_norm = torch.linalg.vector_norm(self.flat.detach(), dim=1)
        self._loss_grad = self._build_loss_grad(compile_step)
        self.steps_done = 0

    # ---- the forward/backward, two ways -------------------------------------------------

    def _member_loss(self, params: dict[str, torch.Tensor], consts: dict[str, torch.Tensor],
                     batch: Batch) -> torch.Tensor:
        with autocast(self.device, self.settings.dtype):
            loss = self.problem.loss_fn(_Bound(self.swap, {**params, **consts}), batch)  # type: ignore[arg-type]
        return loss.float().reshape(())

    def _views(self, flat: torch.Tensor, lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
        parts = flat.split(self.layout.sizes, dim=-1)
        return {n: v.view(*lead, *s) for n, v, s in
                zip(self.layout.names, parts, self.layout.shapes, strict=True)}

    def _build_loss_grad(self, compile_step: bool
                         ) -> Callable[[torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor]]:
        if self.grad_mode == "sum":
            vloss = vmap(self._member_loss, randomness="different")

            def forward(flat: torch.Tensor, batch: Batch) -> torch.Tensor:
                return vloss(self._views(flat, (flat.shape[0],)), self.consts, batch)

            fwd = torch.compile(forward, dynamic=False) if compile_step else forward

            def summed(flat: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
                losses = fwd(flat, batch)
                scaled = losses if self.scaler is None else losses * self.scaler.scale
                (grad,) = torch.autograd.grad(scaled.sum(), flat)
                return losses.detach(), grad
            return summed
        if self.grad_mode != "vmap_grad":
            raise ValueError(f"unknown grad mode {self.grad_mode!r}; expected {GRAD_MODES}")

        def member(flat_i: torch.Tensor, consts: dict[str, torch.Tensor],
                   batch: Batch) -> torch.Tensor:
            return self._member_loss(self._views(flat_i, ()), consts, batch)

        vgrad = vmap(grad_and_value(member), randomness="different")

        def per_member(flat: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            grad, losses = vgrad(flat, self.consts, batch)
            return losses, grad
        fn = torch.compile(per_member, dynamic=False) if compile_step else per_member
        return fn

    # ---- one step ----------------------------------------------------------------------

    def _layer_norms(self, grad: torch.Tensor) -> torch.Tensor:
        """``[P, L]`` per-layer gradient norms.

        In float32, which is 3-4x cheaper than the sequential engine's float64 and agrees
        with it to ~1e-7 — until a sum of squares overflows (elements past ~1e19). That
        only happens to a member that is exploding, and such a member's non-finite
        statistics send it to an exact sequential replay (see :func:`_run_stacked`).
        """
        sizes = self.layout.layer_sizes
        if len(sizes) <= 32:  # a few reductions over contiguous slices: cheapest
            return torch.stack([torch.linalg.vector_norm(part, dim=1)
                                for part in grad.split(sizes, dim=1)], dim=1)
        lengths = torch.tensor(sizes, device=grad.device).expand(grad.shape[0], -1)
        return torch.segment_reduce(grad.square(), "sum", lengths=lengths, axis=1).sqrt()

    def step(self, t: int) -> None:
        """Train every live member one step and write its statistics into the buffer.

        Nothing here waits for the device: the host learns about a non-finite member at the
        next flush, where :meth:`keep` drops it so it is not stepped again.
        """
        full = len(self.members) == len(self.probes)
        idx = self.order[t] if full else self.order[t].index_select(0, self.rows)
        lr = self.lr64[t] if full else self.lr64[t].index_select(0, self.rows)
        neg_lr = self.neg_lr[t] if full else self.neg_lr[t].index_select(0, self.rows)
        losses, grad = self._loss_grad(self.flat, self.data.batch(idx))
        with torch.no_grad():
            flat = self.flat.detach()
            skip = None
            if self.scaler is not None:  # GradScaler.unscale_: measure the true gradients
                grad.mul_(self.scaler.inverse())
                skip = ~torch.isfinite(grad).all(dim=1)
            layer_norms = self._layer_norms(grad)
            grad_norm = torch.linalg.vector_norm(layer_norms, dim=1)
            clip = self.settings.grad_clip
            if clip is not None:
                # torch.nn.utils.clip_grad_norm_'s rule: scale by clip / (norm + eps), ≤ 1.
                coef = (clip / (grad_norm + CLIP_EPS)).clamp(max=1.0)
                grad.mul_(_col(coef))
                clipped = (coef < 1.0).float()
            else:
                clipped = self.zeros
            new = self.optimizer.step(flat, grad, lr, neg_lr, out=self._spare, skip=skip)
            if self.scaler is not None and skip is not None:
                self.scaler.update(skip)
            update_norm = torch.linalg.vector_norm(torch.sub(new, flat, out=self._delta), dim=1)
            new_norm = torch.linalg.vector_norm(new, dim=1)
            ratio = update_norm / self.param_norm.clamp(min=1e-30)
            self.param_norm = new_norm
            row = torch.stack([losses, grad_norm, clipped, ratio, new_norm], dim=1)
            stats, layers = self.buffer.stats[:, t], self.buffer.layers[:, t]
            if full:
                stats[:, : row.shape[1]] = row
                layers.copy_(layer_norms)
                if skip is not None:
                    stats[:, COL["skipped"]] = skip.float()
            else:
                stats[:, : row.shape[1]] = stats[:, : row.shape[1]].index_copy(0, self.rows, row)
                layers.index_copy_(0, self.rows, layer_norms.float())
                if skip is not None:
                    stats[:, COL["skipped"]] = stats[:, COL["skipped"]].index_copy(
                        0, self.rows, skip.float())
        self._spare = flat  # double buffering: the old parameters take the next update
        self.flat = new.detach().requires_grad_(self.grad_mode == "sum")
        self.steps_done = t + 1

    def step_uninstrumented(self, t: int) -> None:
        """Step ``t`` without measuring anything: the benchmark's bare baseline."""
        _, grad = self._loss_grad(self.flat, self.data.batch(self.order[t]))
        with torch.no_grad():
            flat = self.flat.detach()
            new = self.optimizer.step(flat, grad, self.lr64[t], self.neg_lr[t], out=self._spare)
        self._spare = flat
        self.flat = new.detach().requires_grad_(self.grad_mode == "sum")

    def keep(self, keep_rows: list[int]) -> None:
        """Stop stepping every member except those at positions ``keep_rows``."""
        pos = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.flat = self.flat.detach()[pos].requires_grad_(self.grad_mode == "sum")
            self._spare = torch.empty_like(self.flat.detach())
            self._delta = torch.empty_like(self.flat.detach())
            self.consts = {k: v[pos] for k, v in self.consts.items()}
        self.optimizer.keep(pos)
        if self.scaler is not None:
            self.scaler.keep(pos)
        self.param_norm = self.param_norm[pos]
        self.zeros = self.zeros[pos]
        self.rows = self.rows[pos]
        self.members = [self.members[i] for i in keep_rows]

    def lipschitz(self) -> list[float | None]:
        """The Lipschitz upper bound of every live member (as the sequential engine computes
        it on its model), each weight matrix's spectral norms for the whole cohort at once."""
        from stabcheck.engine.curvature import lipschitz_from, spectral_norms

        flat = self.flat.detach()
        names, per_layer = [], []
        slices = self.layout.slices()
        try:
            for name, shape in zip(self.layout.names, self.layout.shapes, strict=True):
                if len(shape) < 2:
                    continue
                lo, hi = slices[name]
                names.append(name)
                per_layer.append(spectral_norms(flat[:, lo:hi].reshape(-1, shape[0],
                                                                       math.prod(shape[1:]))))
            return [lipschitz_from(names, [layer[i] for layer in per_layer])["lipschitz"]
                    for i in range(flat.shape[0])]
        except Exception:  # an exotic parameter layout must never fail the probe
            return [None] * flat.shape[0]

    def snapshot(self) -> dict[str, Any]:
        """Weights and optimizer state of every live member, to replay a failing step."""
        return {"step": self.steps_done, "flat": self.flat.detach().clone(),
                "members": list(self.members), "optimizer": self.optimizer.snapshot(),
                "scaler": self.scaler.snapshot() if self.scaler is not None else None}

    def sequential_probe(self, snap: dict[str, Any], member: int) -> SequentialProbe:
        """A sequential probe in the state ``member`` (a probe position) had at ``snap``."""
        spec = self.probes[member]
        probe = SequentialProbe(self.problem, spec, self.settings, self.data)
        pos = snap["members"].index(member)
        named = dict(probe.model.named_parameters())
        slices = self.layout.slices()
        with torch.no_grad():
            for name, (lo, hi) in slices.items():
                named[name].copy_(snap["flat"][pos, lo:hi].view_as(named[name]))
        self.optimizer.load_into(probe.optimizer, snap["optimizer"], pos, slices, named)
        if probe.scaler is not None and snap.get("scaler") is not None:
            probe.scaler.load_state_dict(_VecScaler.state_dict(snap["scaler"], pos))
        with torch.no_grad():
            probe.param_norm = probe._norm(probe.params)
        return probe


def _tensor_of(model: nn.Module, name: str) -> torch.Tensor:
    value = model.get_parameter(name) if name in dict(model.named_parameters()) \
        else model.get_buffer(name)
    return value


# --------------------------------------------------------------------------- memory


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _activation_bytes(problem: Problem, data: TensorData, batch_size: int) -> int:
    """Bytes of every module output for one batch: a (generous) activation estimate."""
    seed_everything(0)
    model = problem.build_model().to(problem.device)
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        for value in (out if isinstance(out, tuple | list) else (out,)):
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            problem.loss_fn(model, data.batch(torch.arange(min(batch_size, data.n),
                                                           device=problem.device)))
    finally:
        for h in handles:
            h.remove()
    return total


def max_members(problem: Problem, settings: EngineSettings, data: TensorData,
                probes: Sequence[ProbeSpec]) -> int:
    """How many members of this batch size fit in memory at once.

    On CUDA the per-member cost is measured: one real step of a 1-member and a 2-member
    cohort, and the difference of their peak allocations. Elsewhere it is estimated from
    the parameter count (weights, gradient, optimizer state and temporaries) plus every
    module output of one batch, against half the available RAM.
    """
    n = len(probes)
    if n <= 1:
        return 1
    device = problem.device
    if device.type == "cuda":
        peaks = []
        for size in (1, 2):
            free_memory(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            run = _CohortRun(problem, probes[:size], EngineSettings(
                steps=2, dtype=settings.dtype, grad_clip=settings.grad_clip), data)
            run.step(0)
            run.step(1)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            del run
        free_memory(device)
        per_member = max(peaks[1] - peaks[0], 1) * 1.25
        free, _total = torch.cuda.mem_get_info(device)
        budget = 0.8 * free - max(peaks[0] - per_member, 0)
    else:
        seed_everything(0)
        numel = sum(p.numel() for p in problem.build_model().parameters())
        per_member = numel * 4 * 12 + 3 * _activation_bytes(problem, data,
                                                           probes[0].batch_size)
        budget = 0.5 * _available_host_bytes()
    return int(max(1, min(n, budget // max(per_member, 1))))


# --------------------------------------------------------------------------- engine


class _SinkFailure(Exception):
    """``on_record`` raised: re-raised as is, never answered with a sequential re-run."""


class VectorizedEngine:
    """Runs each cohort as one stacked, ``vmap``-ed training loop."""

    name = "vectorized"
    # All probes of a cohort are in flight at once (executors charge time limits per cohort).
    concurrent = True

    def __init__(self, grad_mode: str = "sum", compile_step: bool | None = None,
                 max_cohort: int | None = None) -> None:
        if grad_mode not in GRAD_MODES:
            raise ValueError(f"unknown grad mode {grad_mode!r}; expected {GRAD_MODES}")
        self.grad_mode = grad_mode
        self.compile_step = _compile_requested() if compile_step is None else compile_step
        self.max_cohort = max_cohort
        self._fit: dict[int, int] = {}
        # Where one-line notes go (the audit journals them so the report shows them).
        self.on_note: Callable[[str], None] | None = None

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, on_record: RecordSink,
                   on_steps: StepSink | None = None) -> None:
        """Run every probe of ``cohort``, in as many stacked groups as memory allows."""
        size = self.max_cohort
        if size is None:
            if cohort.batch_size not in self._fit:
                try:
                    self._fit[cohort.batch_size] = max_members(problem, settings, data,
                                                               cohort.probes)
                except Exception:  # the estimate is advisory; the OOM path still guards
                    self._fit[cohort.batch_size] = len(cohort.probes)
            size = self._fit[cohort.batch_size]
        for group in make_cohorts(list(cohort.probes), max_size=size):
            self._run_group(problem, list(group.probes), settings, keys, data, on_record,
                            on_steps)

    def _run_group(self, problem: Problem, probes: list[ProbeSpec], settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, on_record: RecordSink,
                   on_steps: StepSink | None) -> None:
        done: set[int] = set()

        def emit(record: ProbeRecord) -> None:
            done.add(record.index)
            try:
                on_record(record)
            except Exception as exc:  # the sink's own failure is not the engine's
                raise _SinkFailure from exc

        try:
            _run_stacked(problem, probes, settings, keys, data, emit, on_steps,
                         self.grad_mode, self.compile_step)
            free_memory(problem.device)
            return
        except _SinkFailure as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except Exception as exc:
            failure = exc
        rest = [p for p in probes if p.index not in done]
        free_memory(problem.device)
        if is_oom(failure) and len(rest) > 1:
            half = len(rest) // 2
            if self.on_note is not None:
                self.on_note(f"{len(rest)} probes at batch size {rest[0].batch_size} ran out of "
                             "memory stacked together; running them in two halves")
            for part in (rest[:half], rest[half:]):
                self._run_group(problem, part, settings, keys, data, on_record, on_steps)
            return
        info = describe_exception(failure)
        note = (f"vectorized engine failed ({info['type']}: {info['message'][:120]}); "
                "probe re-run with the sequential engine")
        if self.on_note is not None:
            self.on_note(f"{len(rest)} probe(s) at batch size {rest[0].batch_size}: {note}")
        for spec in rest:
            record = run_probe(problem, spec, settings, keys[spec.index], data, on_steps)
            record.notes.append(note)
            on_record(record)


class _CohortCurvature:
    """Sharpness tracking (``probe.curvature_every``) for the members of a stacked cohort.

    At each measurement every live member is unstacked into a sequential probe (its model
    and optimizer state, exactly as the sequential engine would hold them) and measured by
    its own :class:`~stabcheck.engine.curvature.CurvatureTracker`, which keeps its warm-start
    eigenvectors from one measurement to the next. The Hessian-vector products run one member
    at a time; training stays stacked.
    """

    def __init__(self, run: _CohortRun, every: int) -> None:
        self.run, self.every = run, every
        self.trackers: dict[int, CurvatureTracker] = {}

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self, step: int) -> None:
        """Measure every live member after ``step`` updates (before step ``step``)."""
        run = self.run
        settings = run.settings
        snap = run.snapshot()
        with rng_preserved():
            for member in run.members:
                probe = run.sequential_probe(snap, member)
                tracker = self.trackers.get(member)
                if tracker is None:
                    spec = run.probes[member]
                    tracker = CurvatureTracker(
                        probe.model, run.problem.loss_fn, run.data, probe.optimizer, spec.seed,
                        run.device, settings.curvature_batch or spec.batch_size)
                    tracker.release()  # each measurement brings its own unstacked member
                    self.trackers[member] = tracker
                lr = float(run.lr64[min(step, settings.steps - 1), member])
                tracker.measure(step, lr, probe.model, probe.optimizer)
                del probe

    def record(self, member: int, lipschitz_final: float | None) -> dict[str, Any] | None:
        """The member's ``curvature`` record, or ``None`` when it was never measured."""
        tracker = self.trackers.get(member)
        if tracker is None:
            return None
        out = tracker.finish()
        out["lipschitz_final"] = lipschitz_final
        return out


def _run_stacked(problem: Problem, probes: list[ProbeSpec], settings: EngineSettings,
                 keys: dict[int, str], data: TensorData, emit: RecordSink,
                 on_steps: StepSink | None, grad_mode: str, compile_step: bool) -> None:
    """The hot loop of one stacked group. Raises on failure; emitted records stay emitted."""
    started = time.perf_counter()
    run = _CohortRun(problem, probes, settings, data, grad_mode, compile_step)
    names = list(run.layout.layers.names)
    records = [ProbeRecord.for_probe(s, keys[s.index], settings.steps, "vectorized",
                                     layer_names=list(names)) for s in probes]
    for record, bound in zip(records, run.lipschitz(), strict=True):
        record.curvature = {"lipschitz_init": bound, "lipschitz_final": None}
    curvature = _CohortCurvature(run, settings.curvature_every) \
        if settings.curvature_every else None
    if curvature is not None:
        curvature.measure(0)  # sharpness at init, before any step
    share = 1.0 / len(probes)  # wall time is shared: each member is charged its fraction
    snap = run.snapshot()
    deadline = started + settings.timeout_s if settings.timeout_s else None
    timed_out = False

    t = 0
    while t < settings.steps and run.members:
        run.step(t)
        t += 1
        if deadline is not None and time.perf_counter() > deadline:
            timed_out = True
        if t % settings.flush_every and t != settings.steps and not timed_out:
            # As in the sequential engine, a measurement needs no flush before it.
            if curvature is not None and curvature.due(t):
                curvature.measure(t)
            continue
        lo = run.buffer.flushed
        run.buffer.flush(t)
        if on_steps is not None:
            on_steps((t - lo) * len(run.members))
        keep: list[int] = []
        for pos, member in enumerate(run.members):
            if first_nonfinite(run.buffer.host_stats[member, lo:t]) is None:
                keep.append(pos)
                continue
            # Replay this member from the last flush with the sequential engine: its float64
            # statistics decide whether and where it went non-finite, and name the module.
            probe = run.sequential_probe(snap, member)
            head = (run.buffer.host_stats[member], run.buffer.host_layers[member])
            if curvature is not None:
                records[member].curvature = curvature.record(member, None) or \
                    records[member].curvature
            _finish_sequentially(probe, records[member], head, snap["step"], settings, emit,
                                 started, share)
            del probe
        if len(keep) < len(run.members):
            run.keep(keep)
        if timed_out:
            break
        snap = run.snapshot()
        if curvature is not None and curvature.due(t) and run.members:
            curvature.measure(t)
    finals = run.lipschitz() if run.members else []
    for pos, member in enumerate(list(run.members)):
        final = finals[pos]
        tracked = curvature.record(member, final) if curvature is not None else None
        bounds = records[member].curvature
        if tracked is not None:
            records[member].curvature = tracked
        elif bounds is not None:
            bounds["lipschitz_final"] = final
        if timed_out and t < settings.steps:
            records[member].outcome = "timeout"
            records[member].error = {
                "type": "Timeout", "where": None,
                "message": f"cohort ran past probe.timeout_s={settings.timeout_s:g}s at step "
                           f"{t - 1}"}
        fill_trace(records[member], run.buffer.host_stats[member, :t],
                   run.buffer.host_layers[member, :t])
        records[member].steps_run = t
        records[member].wall_time_s = (time.perf_counter() - started) * share
        emit(records[member])


def _finish_sequentially(probe: SequentialProbe, record: ProbeRecord, head: tuple[Any, Any],
                         start: int, settings: EngineSettings, emit: RecordSink,
                         started: float, share: float) -> None:
    """Finish a member that showed non-finite statistics, as the sequential engine would.

    ``probe`` holds the member's state at step ``start`` (the last flush) and ``head`` its
    vectorized statistics before that. Steps ``start…`` are replayed with the sequential
    engine's float64 statistics; the first non-finite one ends the probe and is localised,
    as in :func:`~stabcheck.engine.sequential.run_probe`. If there is none (a float32
    overflow of a finite, exploding norm), the probe goes on sequentially to the end.
    """
    snap = probe.snapshot(start)
    probe.buffer.flushed = start  # rows before ``start`` come from the vectorized run
    done = start
    for step in range(start, settings.steps):
        probe.step(step)
        done = step + 1
        if done % settings.flush_every and done != settings.steps:
            continue
        lo = probe.buffer.flushed
        chunk, _ = probe.buffer.flush(done)
        bad = first_nonfinite(chunk)
        if bad is not None:
            bad_step = lo + bad.row
            done = bad_step + 1
            mark_nonfinite(record, probe, snap, bad_step, bad)
            break
        snap = probe.snapshot(done)
    record.steps_run = done
    if record.curvature is not None:
        from stabcheck.engine.curvature import drop_after, safe_lipschitz

        record.curvature["lipschitz_final"] = safe_lipschitz(probe.model)
        drop_after(record.curvature, record.first_nonfinite_step)
    record.notes.append(f"steps {start}-{done - 1} replayed with the sequential engine after "
                        "non-finite statistics")
    stats = np.concatenate([head[0][:start], probe.buffer.host_stats[start:done]])
    layers = np.concatenate([head[1][:start], probe.buffer.host_layers[start:done]])
    fill_trace(record, stats, layers)
    record.wall_time_s = (time.perf_counter() - started) * share
    emit(record)


# --------------------------------------------------------------------------- selection


ENGINE_CHOICES = ("auto", "vectorized", "sequential")


def select_engine(problem: Problem, requested: str, settings: EngineSettings,
                  data: TensorData, probes: Sequence[ProbeSpec]) -> tuple[Any, str | None]:
    """The engine to run ``probes`` with, and a one-line note when it is not the one asked for.

    ``auto`` and ``vectorized`` both use the vectorized engine when it can run the problem
    and fall back to the sequential one (with the reason) when it cannot.
    """
    from stabcheck.engine import SequentialEngine

    if requested not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {requested!r}; expected one of {ENGINE_CHOICES}")
    if requested == "sequential":
        return SequentialEngine(), None
    reason = vectorized_reason(problem, settings, data, probes)
    if reason is None:
        return VectorizedEngine(), None
    return FallbackEngine(reason), f"sequential engine used: {reason}"


class FallbackEngine:
    """The sequential engine, noting on every record why the vectorized one was not used."""

    name = "sequential"

    def __init__(self, reason: str) -> None:
        self.note = f"sequential engine used: {reason}"

    def run_cohort(self, problem: Problem, cohort: Cohort, settings: EngineSettings,
                   keys: dict[int, str], data: TensorData, on_record: RecordSink,
                   on_steps: StepSink | None = None) -> None:
        """Run every probe sequentially."""
        for spec in cohort.probes:
            record = run_probe(problem, spec, settings, keys[spec.index], data, on_steps)
            record.notes.append(self.note)
            on_record(record)

