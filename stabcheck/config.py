"""The audit config: schema, loading, overrides and error formatting.

``load_config(path)`` parses the YAML safely (:mod:`stabcheck.yamlsafe`), validates it with
pydantic (unknown keys forbidden) and reports *every* problem at once, each as
``config.yaml:LINE:COL: key.path: message (did you mean 'x'?)``. User code named in the config
is not imported here: that happens in :mod:`stabcheck.problem`, after the schema validated.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from stabcheck import yamlsafe
from stabcheck.errors import ConfigError
from stabcheck.thresholds import Thresholds

BUILTIN_MODELS = ("mlp", "cnn", "transformer", "hf")
BUILTIN_DATA = ("blobs", "regression", "text", "images", "hf")
DATA_SUFFIXES = (".csv", ".parquet", ".npz", ".npy")
BUILTIN_LOSSES = ("cross_entropy", "mse", "bce_with_logits", "model")
BUILTIN_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
DTYPES = ("float32", "bfloat16", "float16")
FAIL_ON = ("error", "warning", "never")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if ":" in value:
            _check_reference(value)
            return value
        if value not in BUILTIN_OPTIMIZERS:
            raise ValueError(_choice_message(value, BUILTIN_OPTIMIZERS, "or 'module:Class'"))
        return value


class LRRange(_Strict):
    """``{min, max, num}``: ``num`` learning rates spaced evenly in log space."""

    min: float = Field(gt=0)
    max: float = Field(gt=0)
    num: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> LRRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is smaller than min ({self.min})")
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
    flush_every: int = Field(50, gt=0, description="statistics are copied from the device every "
                             "this many steps (no host sync in between)")
    timeout_s: float | None = Field(None, gt=0, description="a probe that runs longer is "
                                    "stopped and marked 'timeout'")
    curvature_every: int | None = Field(None, gt=0, description="measure sharpness every this "
                                        "many steps; null = off")
    curvature_batch: int | None = Field(None, gt=0, description="examples in the fixed batch "
                                        "the sharpness is measured on (the whole dataset when "
                                        "smaller); null = the probe's own batch size during "
                                        "probes and 512 at init")

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
    """The whole config file. See the README for a commented example."""

    name: str = "audit"
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

    @field_validator("loss")
    @classmethod
    def _loss(cls, value: str) -> str:
        if ":" in value:
            _check_reference(value)
            return value
        if value not in BUILTIN_LOSSES:
            raise ValueError(_choice_message(value, BUILTIN_LOSSES, "or 'module:attr'"))
        return value


def _check_reference(ref: str) -> None:
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ValueError(f"{ref!r} is not a reference: use 'package.module:attr' or "
                         "'./file.py:attr'")


def _choice_message(value: str, choices: tuple[str, ...], extra: str = "") -> str:
    allowed = ", ".join(repr(c) for c in choices) + (f" {extra}" if extra else "")
    msg = f"unknown value {value!r}; expected one of {allowed}"
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return msg + (f" (did you mean {close[0]!r}?)" if close else "")


@dataclass
class LoadedConfig:
    """A validated config plus where it came from (for locating later errors)."""

    config: AuditConfig
    path: Path
    source: yamlsafe.SourceMap
    overridden: set[tuple[str, ...]] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        """Directory that ``./file.py`` references are relative to."""
        return self.path.resolve().parent

    def error_at(self, path: tuple[str | int, ...], message: str) -> ConfigError:
        """A ConfigError located at ``path`` (a key path of the config)."""
        return ConfigError(_format_at(self.source, self.overridden, path, message))


def _format_at(source: yamlsafe.SourceMap, overridden: set[tuple[str, ...]],
               path: tuple[str | int, ...], message: str, prefer_key: bool = False) -> str:
    for over in overridden:
        if tuple(path[: len(over)]) == over:
            dotted = yamlsafe.dotted_path(path)
            return f"<command line>: {dotted}: {message}"
    return source.format(path, message, prefer_key=prefer_key)


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model class that sits at ``path`` in the schema, if any."""
    cls: type[BaseModel] | None = AuditConfig
    for part in path:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            return None
        cls = _first_model(cls.model_fields[part].annotation)
    return cls


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # Drop pydantic's own loc entries (discriminator tags, validator names).
    return tuple(p for p in loc if not (isinstance(p, str) and (p.startswith(("<", "function-")))))


def _format_validation_error(exc: ValidationError, source: yamlsafe.SourceMap,
                             overridden: set[tuple[str, ...]]) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden" and loc:
            parent = _model_at(loc[:-1])
            names = list(parent.model_fields) if parent else []
            msg = f"unknown key {loc[-1]!r}"
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            msg += f" (did you mean {close[0]!r}?)" if close else (
                f" (allowed: {', '.join(names)})" if names else "")
            out.append(_format_at(source, overridden, loc, msg, prefer_key=True))
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if kind == "missing":
            msg = f"missing required key {loc[-1]!r}" if loc else "missing required key"
            out.append(_format_at(source, overridden, loc[:-1], msg, prefer_key=True))
            continue
        if kind == "literal_error":
            choices = tuple(re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
            msg = _choice_message(str(err.get("input")), choices)
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = f"expected a mapping, got {_describe(err.get('input'))}"
        elif kind == "list_type":
            msg = f"expected a list, got {_describe(err.get('input'))}"
        elif kind != "value_error" and not isinstance(err.get("input"), dict | list):
            msg = f"{msg[0].lower()}{msg[1:]}, got {err['input']!r}"
        out.append(_format_at(source, overridden, loc, msg))
    return sorted(out, key=_line_order)


def _line_order(message: str) -> tuple[int, int]:
    match = re.match(r"^.*?:(\d+):(\d+): ", message)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def set_override(raw: dict[str, Any], dotted: str, value: Any) -> tuple[str, ...]:
    """Set ``raw[a][b] = value`` for ``dotted="a.b"``, creating sections as needed."""
    keys = tuple(dotted.split("."))
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value
    return keys


def validate_data(raw: Any, source: yamlsafe.SourceMap,
                  overrides: dict[str, Any] | None = None,
                  defaults: dict[str, Any] | None = None
                  ) -> tuple[AuditConfig, set[tuple[str, ...]]]:
    """Validate plain data against the schema, applying defaults and CLI overrides.

    ``defaults`` (from ``[tool.stabcheck]``) sit under the file's own values; ``overrides``
    (``"sweep.seeds": [0, 1]``) sit above them.
    """
    if raw is None:
        raise ConfigError(f"{source.filename}: config is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source.filename}:1:1: config must be a mapping of keys, "
                          f"got {_describe(raw)}")
    data = _deep_merge(defaults or {}, raw)
    overridden: set[tuple[str, ...]] = set()
    for dotted, value in (overrides or {}).items():
        overridden.add(set_override(data, dotted, value))
    try:
        return AuditConfig.model_validate(data), overridden
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, overridden)) from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                defaults: dict[str, Any] | None = None) -> LoadedConfig:
    """Load and validate ``path``; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    raw, source = yamlsafe.load(path)
    config, overridden = validate_data(raw, source, overrides, defaults)
    return LoadedConfig(config=config, path=path, source=source, overridden=overridden)


class _NoLines(yamlsafe.SourceMap):
    """Where a config given as a Python dict has no lines: ``<dict>: key.path: message``."""

    def format(self, path: yamlsafe.Path_, message: str, prefer_key: bool = False) -> str:
        """Format one error as ``<dict>: key.path: message``."""
        dotted = yamlsafe.dotted_path(path)
        return f"{self.filename}: {dotted}: {message}" if dotted else \
            f"{self.filename}: {message}"


def load_mapping(raw: Any, overrides: dict[str, Any] | None = None,
                 base_dir: str | Path | None = None) -> LoadedConfig:
    """Validate a config given as a dict (the Python API); relative paths in it resolve
    against ``base_dir`` (default: the working directory). Errors read ``<dict>: key: …``."""
    source = _NoLines(filename="<dict>")
    config, overridden = validate_data(copy.deepcopy(raw) if isinstance(raw, dict) else raw,
                                       source, overrides)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return LoadedConfig(config=config, path=base / "<dict>", source=source,
                        overridden=overridden)
