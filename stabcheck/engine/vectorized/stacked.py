"""The stacked state of one cohort, steppable one instrumented step at a time.

Each member's model is built exactly as the sequential engine builds it (same seed, same
initialisation); its trainable parameters are laid out side by side in one flat ``[P, N]``
tensor; the forward runs under :func:`torch.func.vmap` over one base module whose parameters
are swapped for views of that tensor; the gradient comes back as one ``[P, N]`` tensor, and
norms, clipping and the optimizer's stacked update (from the optimizer registry) are a
handful of whole-cohort tensor operations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import grad_and_value, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from stabcheck import optimizers
from stabcheck.engine.base import EngineSettings
from stabcheck.engine.curvature.lipschitz import lipschitz_from, spectral_norms
from stabcheck.engine.instruments import CLIP_EPS, batch_order, build_model, warmup_factors
from stabcheck.engine.sequential import SequentialProbe, autocast
from stabcheck.engine.stats import StatBuffer
from stabcheck.engine.vectorized import rnn
from stabcheck.engine.vectorized.attention import folded_attention
from stabcheck.engine.vectorized.layout import Bound, Layout, Swap, tensor_of
from stabcheck.engine.vectorized.scaler import StackedScaler
from stabcheck.optimizers.spec import StackedOptimizer, col
from stabcheck.plan import ProbeSpec
from stabcheck.problem import Batch, Problem, TensorData

GRAD_MODES = ("sum", "vmap_grad")


class Ineligible(Exception):
    """The vectorized engine cannot run this problem; the message says why (one line)."""


def stacked_optimizer(problem: Problem) -> StackedOptimizer:
    """The registry's stacked update for the problem's optimizer."""
    try:
        spec = optimizers.get(problem.optimizer_name)
    except KeyError:
        raise Ineligible(f"optimizer {problem.optimizer_name!r} has no vectorized "
                         "implementation") from None
    if spec.stacked is None:
        raise Ineligible(f"optimizer {spec.name!r} has no vectorized implementation")
    return spec.stacked(problem.optimizer_kwargs)


class CohortRun:
    """The stacked state of one cohort, steppable one instrumented step at a time."""

    def __init__(self, problem: Problem, probes: Sequence[ProbeSpec], settings: EngineSettings,
                 data: TensorData, grad_mode: str = "sum", compile_step: bool = False,
                 math_attention: bool = False) -> None:
        self.problem, self.settings, self.data = problem, settings, data
        # The stacked step leaves out an all-ones attention mask (transformers branches on its
        # values, which vmap refuses; attending everywhere is what no mask means). The
        # sequential probes unstacked from this run (replays, curvature) keep the data as is.
        self.stacked_data, _ = data.without_trivial_masks()
        # scaled_dot_product_attention through its composite (math) kernel: under vmap the
        # fused CPU kernel is chosen even for a mask that needs a gradient (T5's position
        # bias), which it cannot give; the eligibility trial turns this on where it helps.
        self.math_attention = math_attention
        self.probes = list(probes)
        self.device = device = problem.device
        self.grad_mode = grad_mode
        # Exactly the sequential engine's initialisation, member by member.
        models = [build_model(problem, spec.seed) for spec in self.probes]
        self.base = models[0]
        rnn.substitute(self.base)  # recurrent layers that vmap can batch (only here)
        self.swap = Swap(self.base)
        self.layout = layout = Layout.of(self.base)
        for model in models[1:]:
            if Layout.of(model).shapes != layout.shapes or \
                    Layout.of(model).names != layout.names:
                raise Ineligible("members of one cohort built models of different shapes")
        with torch.no_grad():
            self.flat = torch.stack([
                torch.cat([dict(m.named_parameters())[n].detach().reshape(-1)
                           for n in layout.names]) for m in models])
            trainable = set(layout.names)
            consts: dict[str, torch.Tensor] = {}
            for name, _ in [*self.base.named_parameters(), *self.base.named_buffers()]:
                if name not in trainable:
                    consts[name] = torch.stack([tensor_of(m, name).detach() for m in models])
        # What the stacked members carry besides their trainable parameters: frozen parameters
        # and buffers, stacked too; buffers (BatchNorm running statistics) are updated in
        # place under vmap, each member's own row.
        self.consts = consts
        self._buffers = {name for name, _ in self.base.named_buffers()}
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
        self.optimizer = stacked_optimizer(problem)
        # float16: dynamic loss scaling per member, as the sequential engine's GradScaler.
        self.scaler = StackedScaler(P, device) if settings.dtype == "float16" else None
        if self.scaler is not None and grad_mode != "sum":
            raise ValueError("float16 loss scaling needs grad_mode='sum'")
        self.buffer = StatBuffer(steps, len(layout.layers.names), device, leading=(P,))
        self.buffer.fill("lr", self.lr64.T.float())
        self.buffer.fill("skipped", 0.0)
        self.zeros = torch.zeros(P, device=device)
        with torch.no_grad():
            self.param_norm = torch.linalg.vector_norm(self.flat.detach(), dim=1)
        self._loss_grad = self._build_loss_grad(compile_step)
        self.steps_done = 0

    # ---- the forward/backward, two ways -------------------------------------------------

    def _member_loss(self, params: dict[str, torch.Tensor], consts: dict[str, torch.Tensor],
                     batch: Batch) -> torch.Tensor:
        attention = sdpa_kernel(SDPBackend.MATH) if self.math_attention \
            else contextlib.nullcontext()
        with autocast(self.device, self.settings.dtype), attention:
            loss = self.problem.loss_fn(Bound(self.swap, {**params, **consts}), batch)  # type: ignore[arg-type]
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

            def folded(flat: torch.Tensor, batch: Batch) -> torch.Tensor:
                with folded_attention():  # one attention call for the whole stack
                    return forward(flat, batch)

            fwd = torch.compile(forward, dynamic=False) if compile_step else folded

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
        losses, grad = self._loss_grad(self.flat, self.stacked_data.batch(idx))
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
                grad.mul_(col(coef))
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
            columns = {"loss": losses, "grad_norm": grad_norm, "clipped": clipped,
                       "update_ratio": ratio, "param_norm": new_norm}
            if skip is not None:
                columns["skipped"] = skip
            self.buffer.write(t, layer_norms, rows=None if full else self.rows, **columns)
        self._spare = flat  # double buffering: the old parameters take the next update
        self.flat = new.detach().requires_grad_(self.grad_mode == "sum")
        self.steps_done = t + 1

    def step_uninstrumented(self, t: int) -> None:
        """Step ``t`` without measuring anything: the benchmark's bare baseline."""
        _, grad = self._loss_grad(self.flat, self.stacked_data.batch(self.order[t]))
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
                "consts": {k: v.clone() if k in self._buffers else v
                           for k, v in self.consts.items()},
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
            for name, stacked in snap["consts"].items():  # BatchNorm statistics, frozen weights
                tensor_of(probe.model, name).copy_(stacked[pos])
        self.optimizer.load_into(probe.optimizer, snap["optimizer"], pos, slices, named)
        if snap.get("scaler") is not None:
            probe.scaler.load_state_dict(StackedScaler.state_dict(snap["scaler"], pos))
        probe.buffer.weights_loaded()
        return probe
