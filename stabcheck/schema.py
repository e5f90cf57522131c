"""The audit config's schema: every section, key, default and bound, as pydantic models.

Loading, overrides and error formatting live in :mod:`stabcheck.config`.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from stabcheck.optimizers import BUILTIN_OPTIMIZERS
from stabcheck.thresholds import Thresholds

BUILTIN_MODELS = ("mlp", "cnn", "transformer", "hf")
BUILTIN_DATA = ("blobs", "regression", "text", "images", "hf")
DATA_SUFFIXES = (".csv", ".parquet", ".npz", ".npy")
BUILTIN_LOSSES = ("cross_entropy", "mse", "bce_with_logits", "model")
DTYPES = ("float32", "bfloat16", "float16")
FAIL_ON = ("error", "warning", "never")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Strict(BaseModel):
    # strict: no `true` for 1.0, no '0.1' for 0.1; allow_inf_nan=False: .inf and .nan are
    # refused by every number of the schema (a user's kwargs are checked by _finite_kwargs).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class _Component(_Strict):
    """A built-in (``builtin: name``) or user code (``factory: "module:attr"``) plus kwargs."""

    builtin: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> _Component:
        sources = [k for k in self._sources() if getattr(self, k) is not None]
        if len(sources) != 1:
            given = f" (got {' and '.join(sources)})" if sources else ""
            raise ValueError(f"give exactly one of {' or '.join(map(repr, self._sources()))}"
                             + given)
        if self.factory is not None:
            _check_reference(self.factory)
        return self

    def _sources(self) -> tuple[str, ...]:
        return ("builtin", "factory")


class ModelSection(_Component):
    """``model:``: what to train."""

    builtin: Literal["mlp", "cnn", "transformer", "hf"] | None = None
    checkpoint: str | None = Field(None, description="weights to load into the model before "
                                   "probing (.safetensors, or a torch file loaded with "
                                   "weights_only=True)")


class DataSection(_Component):
    """``data:``: what to train on."""

    builtin: Literal["blobs", "regression", "text", "images", "hf"] | None = None
    path: str | None = Field(None, description="a data file, relative to the config file: "
                             ".csv, .parquet (needs pyarrow), .npz or .npy")
    target: str | int | None = Field(None, description="with path: the column (csv, parquet), "
                                     "array key (npz) or column index (npy) of the targets")
    features: list[str | int] | None = Field(None, description="with path: the input columns "
                                             "or keys (default: all but the target)")
    standardize: bool = Field(False, description="with path: scale each feature column to "
                              "zero mean and unit variance")
    target_key: str = Field("labels", description="for dict datasets with a loss other than "
                            "'model': the key holding the targets; the rest go to the model as "
                            "keyword arguments")
    max_samples: int = Field(200_000, gt=0, description="a torch Dataset is materialised up to "
                             "this many samples")

    def _sources(self) -> tuple[str, ...]:
        return ("builtin", "factory", "path")

    @model_validator(mode="after")
    def _file_options(self) -> DataSection:
        if self.path is None:
            extra = [k for k in ("target", "features") if getattr(self, k) is not None]
            if self.standardize:
                extra.append("standardize")
            if extra:
                raise ValueError(f"{extra[0]!r} applies to data files only (data.path)")
            return self
        if self.kwargs:
            raise ValueError("kwargs do not apply to a data file (data.path)")
        if not self.path.lower().endswith(DATA_SUFFIXES):
            raise ValueError(f"data.path {self.path!r}: unknown file type; expected one of "
                             f"{', '.join(DATA_SUFFIXES)}")
        return self


class OptimizerSection(_Strict):
    """``optimizer:``: a built-in name or ``"module:Class"`` of a torch optimizer."""

    name: str = "sgd"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kwargs")
    @classmethod
    def _finite_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            for number in item if isinstance(item, list | tuple) else [item]:
                if isinstance(number, float) and not math.isfinite(number):
                    raise ValueError(f"{key}: {number} is not a finite number")
        return value

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return _builtin_or_reference(value, BUILTIN_OPTIMIZERS, "'module:Class'")


class LRRange(_Strict):
    """``{min, max, num}``: ``num`` learning rates spaced evenly in log space."""

    min: float = Field(gt=0)
    max: float = Field(gt=0)
    num: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> LRRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is smaller than min ({self.min})")
        if self.max == self.min and self.num > 1:
            raise ValueError(f"min and max are both {self.min:g}: num must be 1 (or widen "
                             "the range)")
        return self

    def values(self) -> list[float]:
        """The expanded, log-spaced list."""
        if self.num == 1:
            return [self.min]
        lo, hi = math.log10(self.min), math.log10(self.max)
        step = (hi - lo) / (self.num - 1)
        return [float(f"{10 ** (lo + i * step):.6g}") for i in range(self.num)]


def _lr_kind(value: Any) -> str:
    return "<range>" if isinstance(value, dict | LRRange) else "<list>"


LearningRates = Annotated[
    Annotated[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Tag("<list>")]
    | Annotated[LRRange, Tag("<range>")],
    Discriminator(_lr_kind),
]


class SweepSection(_Strict):
    """``sweep:``: the grid of probes (learning rates x seeds x batch sizes)."""

    learning_rates: LearningRates
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(default_factory=lambda: [0])
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32])

    @field_validator("learning_rates", "seeds", "batch_sizes")
    @classmethod
    def _non_empty_unique(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("is empty: the sweep needs at least one value")
            if len(set(value)) != len(value):
                raise ValueError("has duplicate values")
        return value

    def lr_values(self) -> list[float]:
        """The sorted learning rates, with a ``{min, max, num}`` range expanded."""
        lrs = self.learning_rates
        return sorted(lrs.values() if isinstance(lrs, LRRange) else lrs)


class ProbeSection(_Strict):
    """``probe:``: how each short training run is carried out."""

    steps: int = Field(200, gt=0, le=1_000_000)
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; null "
                                    "measures norms but never clips")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warmup")
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    flush_every: int = Field(50, gt=0, le=1_000_000, description="statistics are copied from "
                             "the device every this many steps (no host sync in between)")
    timeout_s: float | None = Field(None, gt=0, le=30 * 86400, description="a probe that runs "
                                    "longer is stopped and marked 'timeout'")
    curvature_every: int | None = Field(None, gt=0, le=1_000_000, description="measure "
                                        "sharpness every this many steps; null = off")
    curvature_batch: int | None = Field(None, gt=0, description="examples in the fixed batch "
                                        "the sharpness is measured on (the whole dataset when "
                                        "smaller); null = the probe's own batch size during "
                                        "probes and 512 at init")
    init_curvature: bool = Field(True, description="measure the curvature at init (sharpness, "
                                 "predicted LR ceiling, noise scale) before the probes, within "
                                 "a budget of 10% of their cost; false = skip it")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _warmup_fits(self) -> ProbeSection:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) is longer than steps "
                             f"({self.steps})")
        return self


class AuditConfig(_Strict):
    """The whole config file. docs/config.md has a commented example."""

    name: str = Field("audit", max_length=200)
    model: ModelSection
    data: DataSection
    loss: str = "cross_entropy"
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    sweep: SweepSection
    probe: ProbeSection = Field(default_factory=ProbeSection)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    target_lr: float | None = Field(None, gt=0, description="the LR intended for the real run")
    target_batch_size: int | None = Field(None, gt=0, description="the batch size of the real "
                                          "run; the stability margin is judged at the nearest "
                                          "swept batch size (default: the smallest margin "
                                          "over all of them)")
    fail_on: Literal["error", "warning", "never"] = "error"
    step: str | None = Field(None, description="your own training step, 'module:function' or "
                             "'./file.py:function' (docs/custom-step.md)")
    step_optimizers: dict[str, str] = Field(default_factory=dict, description="with `step`: "
                                            "optimizer name -> submodule of the model it trains")

    @field_validator("step")
    @classmethod
    def _step(cls, value: str | None) -> str | None:
        if value is not None:
            _check_reference(value)
        return value

    @model_validator(mode="after")
    def _step_optimizers(self) -> AuditConfig:
        if self.step_optimizers and self.step is None:
            raise ValueError("step_optimizers is set but step is not: name your training "
                             "step with step: './train.py:train_step'")
        return self

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        return _builtin_or_reference(value, BUILTIN_LOSSES, "'module:attr'")


def _builtin_or_reference(value: str, builtins: tuple[str, ...], form: str) -> str:
    """``value`` if it is a reference (``"module:attr"``) or one of ``builtins``."""
    if ":" in value:
        _check_reference(value)
    elif value not in builtins:
        raise ValueError(choice_message(value, builtins, f"or {form}"))
    return value


def _check_reference(ref: str) -> None:
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ValueError(f"{ref!r} is not a reference: use 'package.module:attr' or "
                         "'./file.py:attr'")


def choice_message(value: str, choices: tuple[str, ...], extra: str = "") -> str:
    allowed = ", ".join(repr(c) for c in choices) + (f" {extra}" if extra else "")
    msg = f"unknown value {value!r}; expected one of {allowed}"
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return msg + (f" (did you mean {close[0]!r}?)" if close else "")
