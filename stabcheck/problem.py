"""From a validated config to the things a probe needs: a model builder, data, a loss.

This is where user code is imported and called for the first time, after the schema has
validated. Failures are sorted by who must fix them:

* a reference that does not import or whose kwargs do not bind → :class:`ConfigError` (exit 2);
* built-ins that do not fit together (model width ≠ data features) → :class:`ConfigError`;
* user code that raises while building the model or data → :class:`UserCodeError` (exit 3).
"""

from __future__ import annotations

import inspect
import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stabcheck import nodynamo, optimizers
from stabcheck.builtins.data import DATASETS
from stabcheck.builtins.hf import hf, hf_data
from stabcheck.builtins.models import MODELS
from stabcheck.config import LoadedConfig
from stabcheck.datafiles import read_data_file
from stabcheck.errors import ConfigError, UserCodeError
from stabcheck.executors.hygiene import time_limit
from stabcheck.references import ReferenceProblem, check_kwargs, resolve_callable, resolve_paths
from stabcheck.stepfn import StepFn, StepReturnError, dry_loss_fn, parameter_groups
from stabcheck.tensordata import Batch, DataShapeError, TensorData, as_tensor_data, nonfinite

__all__ = ["Batch", "LossFn", "Problem", "TensorData", "build_problem", "make_loss_fn"]

LossFn = Callable[[nn.Module, Batch], torch.Tensor]
BUILTIN_MODELS: dict[str, Callable[..., Any]] = {**MODELS, "hf": hf}
BUILTIN_DATASETS: dict[str, Callable[..., Any]] = {**DATASETS, "hf": hf_data}


@dataclass
class Problem:
    """Everything a probe needs, built once per audit."""

    build_model: Callable[[], nn.Module]
    data: TensorData
    loss_fn: LossFn
    make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
    optimizer_name: str
    optimizer_kwargs: dict[str, Any]
    device: torch.device
    num_classes: int | None
    loss_name: str
    notes: list[str] = field(default_factory=list)  # conversions made on the user's behalf
    # A user training step (docs/custom-step.md) and its optimizers' submodules, or None.
    step_fn: StepFn | None = None
    step_groups: dict[str, str] = field(default_factory=dict)


def resolve_device(requested: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; an unavailable device is a config error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{requested!r} requested but no CUDA device is available "
                             "(use 'auto' or 'cpu')")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"{requested!r} requested but only {torch.cuda.device_count()} "
                             "CUDA device(s) exist")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ValueError("'mps' requested but MPS is not available")
    return torch.device(requested)


def _reference(loaded: LoadedConfig, path: tuple[str, ...], ref: str) -> Any:
    try:
        return resolve_callable(ref, loaded.base_dir)
    except ReferenceProblem as exc:
        raise loaded.error_at(path, str(exc)) from None


def _builder(loaded: LoadedConfig, section: str, registry: Mapping[str, Callable[..., Any]]
             ) -> tuple[Callable[..., Any], dict[str, Any], bool]:
    spec = getattr(loaded.config, section)
    if spec.builtin is not None:
        fn, user = registry[spec.builtin], False
    else:
        fn, user = _reference(loaded, (section, "factory"), spec.factory), True
    label = f"{section} {spec.builtin or spec.factory!r}"
    try:
        check_kwargs(fn, spec.kwargs, label)
    except ReferenceProblem as exc:
        raise loaded.error_at((section, "kwargs"), str(exc)) from None
    kwargs = resolve_paths(dict(spec.kwargs), loaded.base_dir) if user else dict(spec.kwargs)
    return fn, kwargs, user


def _call_user(fn: Callable[..., Any], kwargs: dict[str, Any], what: str, user: bool,
               loaded: LoadedConfig, path: tuple[str, ...]) -> Any:
    try:
        return fn(**kwargs)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if user:
            raise UserCodeError(f"{what} raised {detail}") from exc
        raise loaded.error_at(path, f"{what} failed: {detail}") from None


def _extract_loss(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "loss" in output:
        return output["loss"]
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # (loss, logits, ...) as return_dict=False models return it
    raise TypeError(f"with loss: model, forward must return the loss (a tensor, a dict or "
                    f"object with 'loss', or a tuple whose first element is the loss); it "
                    f"returned {type(output).__name__}")


def primary_output(output: Any) -> torch.Tensor:
    """The tensor a criterion compares with the targets: the output itself, a model output's
    ``logits`` (Hugging Face), or the first element of a tuple (``(logits, aux)``)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits",
                                                                            None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__}; a loss other than 'model' "
                    "needs a tensor, an output with .logits, or a tuple whose first element is "
                    "the prediction")


_is_batched = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)


def _batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is a tensor inside ``vmap`` (where nll_loss runs as a decomposition)."""
    return bool(_is_batched is not None and _is_batched(t))


def vmapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy`` (mean, ``ignore_index=-100``) in the ops of the decomposition torch
    itself runs under ``vmap``: the same numbers, without the ``torch._check`` in it that
    imports ``torch.fx.experimental.symbolic_shapes`` and sympy (about a second)."""
    logp = logits.log_softmax(1)
    keep = target != -100
    picked = -torch.gather(logp, 1, torch.where(keep, target, 0).unsqueeze(1)).squeeze(1)
    return torch.where(keep, picked, 0).sum() / keep.sum().to(logp)


def _builtin_criterion(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Sequence models: [N, T, V] logits against [N, T] tokens.
        if out.dim() > 2:
            out, target = out.reshape(-1, out.shape[-1]), target.reshape(-1)
        if out.dim() == 2 and not target.is_floating_point() and (_batched(out)
                                                                  or _batched(target)):
            return vmapped_cross_entropy(out.float(), target)
        return F.cross_entropy(out.float(), target)

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.shape != target.shape and out.numel() == target.numel():
            target = target.reshape(out.shape)
        return F.mse_loss(out.float(), target.float())

    def bce_with_logits(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if out.shape != target.shape and out.numel() == target.numel():
            target = target.reshape(out.shape)
        return F.binary_cross_entropy_with_logits(out.float(), target.float())

    return {"cross_entropy": cross_entropy, "mse": mse, "bce_with_logits": bce_with_logits}[name]


def make_loss_fn(loss: str, criterion: Callable[..., torch.Tensor] | None,
                 target_key: str) -> LossFn:
    """Build ``(model, batch) -> scalar loss`` for any batch structure."""
    if loss == "model":
        def model_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
            out = model(**batch) if isinstance(batch, dict) else model(*batch)
            return _extract_loss(out)
        return model_loss
    assert criterion is not None

    def criterion_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        if isinstance(batch, dict):
            inputs = {k: v for k, v in batch.items() if k != target_key}
            return criterion(primary_output(model(**inputs)), batch[target_key])
        if len(batch) < 2:
            raise ValueError("this loss needs (inputs, targets); the data has only inputs "
                             "(use loss: model if the model computes its own loss)")
        return criterion(primary_output(model(*batch[:-1])), batch[-1])
    return criterion_loss


def _optimizer_factory(loaded: LoadedConfig
                       ) -> Callable[[list[nn.Parameter], float], torch.optim.Optimizer]:
    spec = loaded.config.optimizer
    cls: Callable[..., torch.optim.Optimizer]
    if ":" in spec.name:
        found = _reference(loaded, ("optimizer", "name"), spec.name)
        if not (inspect.isclass(found) and issubclass(found, torch.optim.Optimizer)):
            raise loaded.error_at(("optimizer", "name"),
                                  f"{spec.name!r} is not a torch.optim.Optimizer subclass")
        cls = found
    else:
        cls = optimizers.get(spec.name).torch_class
    if "lr" in spec.kwargs:
        raise loaded.error_at(("optimizer", "kwargs", "lr"),
                              "set learning rates under sweep.learning_rates, not here")
    try:
        inspect.signature(cls).bind([], lr=1.0, **spec.kwargs)
    except TypeError as exc:
        raise loaded.error_at(("optimizer", "kwargs"), f"{spec.name}: {exc}") from None
    except ValueError:
        pass
    kwargs = dict(spec.kwargs)
    lr = min(loaded.config.sweep.lr_values())
    try:  # options torch rejects (momentum -1, betas > 1) fail here, not in every probe
        dummy = torch.zeros(1, requires_grad=True)
        trial = cls([dummy], lr=lr, **kwargs)  # type: ignore[call-arg]
        if ":" not in spec.name:  # a built-in: step it too (a user's class may count steps)
            dummy.grad = torch.ones(1)
            trial.step()
            trial.step()  # the second step uses the state the first made (momentum buffers)
    except Exception as exc:
        raise loaded.error_at(("optimizer", "kwargs"), f"{spec.name}: {exc}") from None

    def make(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return cls(params, lr=lr, **kwargs)  # type: ignore[call-arg]
    return make


def _load_checkpoint(model: nn.Module, path: Path) -> None:
    # Never unpickle arbitrary objects from a config-named file (issue: hostile input).
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{path}: reading .safetensors needs the 'safetensors' package"
                              ) from None
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)


def build_problem(loaded: LoadedConfig, device: torch.device | None = None) -> Problem:
    """Import user code, build data and a trial model, and check that they fit together.

    Also checks what needs the data to check: every batch size fits in the dataset, and one
    forward pass of a tiny batch produces a finite scalar loss.
    """
    nodynamo.install()  # the optimizer built below imports no torch._dynamo (``validate``)
    cfg = loaded.config
    model_fn, model_kwargs, model_is_user = _builder(loaded, "model", BUILTIN_MODELS)
    data_is_user = cfg.data.factory is not None
    if cfg.data.path is None:
        data_fn, data_kwargs, data_is_user = _builder(loaded, "data", BUILTIN_DATASETS)
    criterion = None
    if cfg.loss != "model":
        criterion = _reference(loaded, ("loss",), cfg.loss) if ":" in cfg.loss \
            else _builtin_criterion(cfg.loss)
    make_optimizer = _optimizer_factory(loaded)
    if device is None:
        try:
            device = resolve_device(cfg.probe.device)
        except ValueError as exc:
            raise loaded.error_at(("probe", "device"), str(exc)) from None

    notes: list[str] = []
    if cfg.data.path is not None:
        tensors, notes = read_data_file(loaded)
        data = TensorData(tensors)
    else:
        raw_data = _call_user(data_fn, data_kwargs, "the data factory", data_is_user, loaded,
                              ("data", "kwargs"))
        try:
            data = as_tensor_data(raw_data, cfg.data.max_samples, "the data factory", notes)
        except DataShapeError as exc:
            raise loaded.error_at(("data", "factory" if data_is_user else "builtin"), str(exc)
                                  ) from None
    bad = nonfinite(data)
    if bad:
        raise loaded.error_at(("data",), f"the data is not finite: {bad}; bad data, not a "
                              "learning-rate problem: drop or fill those samples before "
                              "auditing")
    for i, bs in enumerate(cfg.sweep.batch_sizes):
        if bs > data.n:
            raise loaded.error_at(("sweep", "batch_sizes", i),
                                  f"batch size {bs} is larger than the dataset ({data.n} samples)")
    if isinstance(data.tensors, dict) and cfg.loss != "model" \
            and cfg.data.target_key not in data.tensors:
        raise loaded.error_at(("data", "target_key"),
                              f"the data has no key {cfg.data.target_key!r} (keys: "
                              f"{', '.join(data.tensors)})")

    checkpoint = Path(cfg.model.checkpoint) if cfg.model.checkpoint else None
    if checkpoint is not None and not checkpoint.is_absolute():
        checkpoint = loaded.base_dir / checkpoint

    def build_model() -> nn.Module:
        model = _call_user(model_fn, model_kwargs, "the model factory", model_is_user, loaded,
                           ("model", "kwargs"))
        if not isinstance(model, nn.Module):
            raise loaded.error_at(("model", "factory"), f"the model factory returned "
                                  f"{type(model).__name__}; expected a torch nn.Module (return "
                                  "the model itself, not a tuple or a class)")
        if checkpoint is not None:
            try:
                _load_checkpoint(model, checkpoint)
            except ConfigError:
                raise
            except Exception as exc:
                if isinstance(exc, pickle.UnpicklingError):
                    detail = ("it holds Python objects, not just tensors (checkpoints are "
                              "loaded with torch.load(weights_only=True), which refuses them)")
                else:
                    lines = str(exc).strip().splitlines()
                    detail = f"{type(exc).__name__}: {lines[0] if lines else ''}"
                raise loaded.error_at(("model", "checkpoint"),
                                      f"cannot load {checkpoint}: {detail}") from None
        return model

    loss_fn = make_loss_fn(cfg.loss, criterion, cfg.data.target_key)
    step_fn = _training_step(loaded, build_model, make_optimizer)
    if step_fn is not None:
        loss_fn = dry_loss_fn(step_fn, cfg.step_optimizers, make_optimizer)
    with time_limit(cfg.probe.timeout_s, "the trial forward pass"):
        num_classes = _trial_forward(loaded, build_model, data, loss_fn,
                                     model_is_user or data_is_user or ":" in cfg.loss
                                     or step_fn is not None)
    return Problem(build_model=build_model, data=data, loss_fn=loss_fn,
                   make_optimizer=make_optimizer, optimizer_name=cfg.optimizer.name,
                   optimizer_kwargs=dict(cfg.optimizer.kwargs), device=device,
                   num_classes=num_classes, loss_name=cfg.loss, notes=notes,
                   step_fn=step_fn, step_groups=dict(cfg.step_optimizers))


def _training_step(loaded: LoadedConfig, build_model: Callable[[], nn.Module],
                   make_optimizer: Callable[[list[nn.Parameter], float], torch.optim.Optimizer]
                   ) -> StepFn | None:
    """The user's ``step:`` function, with its optimizer groups checked against the model."""
    cfg = loaded.config
    if cfg.step is None:
        return None
    step_fn = _reference(loaded, ("step",), cfg.step)
    if not callable(step_fn):
        raise loaded.error_at(("step",), f"{cfg.step!r} is {type(step_fn).__name__}, not a "
                              "function train_step(model, batch, optimizers, ctx)")
    if cfg.probe.dtype == "float16":
        raise loaded.error_at(("probe", "dtype"), "a custom training step runs without fp16 "
                              "loss scaling; use bfloat16 or float32")
    torch.manual_seed(0)
    try:
        parameter_groups(build_model(), cfg.step_optimizers)
    except ValueError as exc:
        raise loaded.error_at(("step_optimizers",), str(exc)) from None
    fn: StepFn = step_fn
    return fn


def _trial_forward(loaded: LoadedConfig, build_model: Callable[[], nn.Module], data: TensorData,
                   loss_fn: LossFn, user: bool) -> int | None:
    """Run one tiny CPU batch so shape mismatches surface before any probe starts."""
    torch.manual_seed(0)
    model = build_model()
    batch = data.batch(torch.arange(min(2, data.n)))
    outputs: list[Any] = []
    hook = model.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        loss = loss_fn(model, batch)
    except (KeyboardInterrupt, SystemExit):
        raise
    except StepReturnError as exc:
        raise loaded.error_at(("step",), str(exc)) from None
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if user:
            raise UserCodeError(f"a trial forward pass of one batch raised {detail}") from exc
        raise loaded.error_at(("model", "kwargs"), f"the model does not fit the data: {detail}"
                              ) from None
    finally:
        hook.remove()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) \
            else type(loss).__name__
        raise loaded.error_at(("loss",), f"the loss must be a scalar tensor; it returned {got} "
                              "(reduce it, e.g. with .mean())")
    if loaded.config.loss == "cross_entropy" and outputs:
        try:
            return int(primary_output(outputs[-1]).shape[-1])
        except TypeError:
            return None
    return None


def check_largest_batch(loaded: LoadedConfig, problem: Problem) -> None:
    """One forward and backward pass at the largest swept batch size (``validate``), so a
    batch that does not fit the model or the device fails before the audit, not in it."""
    bs = max(loaded.config.sweep.batch_sizes)
    torch.manual_seed(0)
    try:
        model = problem.build_model().to(problem.device)
        batch = problem.data.to(problem.device).batch(torch.arange(bs, device=problem.device))
        problem.loss_fn(model, batch).backward()
    except torch.cuda.OutOfMemoryError:
        raise loaded.error_at(("sweep", "batch_sizes"), f"batch size {bs} does not fit in "
                              f"{problem.device} memory (a trial step ran out of memory)"
                              ) from None
    except (KeyboardInterrupt, SystemExit, ConfigError):
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise UserCodeError(f"a trial step at batch size {bs} raised {detail}") from exc


def log_num_classes(problem: Problem) -> float | None:
    """``ln(C)``: the expected initial cross-entropy of a classifier with C classes."""
    return math.log(problem.num_classes) if problem.num_classes else None
