"""Typed, frozen results between diagnose and the reports.

Diagnose makes them; every renderer (terminal, Markdown, HTML, JSON, JUnit, GitHub) reads
their attributes and only formats. Numbers are rounded once, here, when a result is made: every
float a result holds, at any depth, goes through :func:`stabcheck.records.significant` (6
significant digits; ``None`` when missing or not finite), so no detector and no renderer
rounds on its own, and last-digit noise between numpy builds never changes a report.
Mappings become read-only views and lists tuples, so a finished result cannot change under a
renderer.

Configured values (learning rates, batch sizes, ``grad_clip``, thresholds) are not
measurements: fields marked :data:`EXACT` keep them as given, so a reported max stable LR is
exactly a swept learning rate.

``to_json()`` gives the JSON report's plain data with the keys of ``schema_version`` 1 (field
names are the keys; see docs/json-report.md). A field whose metadata says :data:`NOT_IN_JSON`
is for renderers only; one marked :data:`OMIT_WHEN_EMPTY` is left out when it is ``None`` or
empty, as the report always did for figures that were not measured.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from stabcheck.records import significant

NOT_IN_JSON: Mapping[str, bool] = MappingProxyType({"json": False})
OMIT_WHEN_EMPTY: Mapping[str, bool] = MappingProxyType({"omit_when_empty": True})
EXACT: Mapping[str, bool] = MappingProxyType({"exact": True})


class FrozenMap(Mapping[Any, Any]):
    """A read-only mapping that, unlike ``MappingProxyType``, copies and pickles."""

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)


def _frozen(value: Any, rule: Any) -> Any:
    if isinstance(value, float):
        return rule(value)
    if isinstance(value, Mapping):
        return FrozenMap({k: _frozen(v, rule) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v, rule) for v in value)
    return value


def rounded(value: Any) -> Any:
    """The one rounding rule of the reports (:func:`~stabcheck.records.significant`), applied
    through mappings and sequences, which become read-only."""
    return _frozen(value, significant)


def exact(value: Any) -> Any:
    """``value`` read-only, its numbers as given."""
    return _frozen(value, lambda x: x)


def plain(value: Any) -> Any:
    """A result, read-only mapping or tuple as JSON-ready dicts and lists."""
    if isinstance(value, Result):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


class Result:
    """Base of every frozen result: rounds on creation, converts to the JSON report's data."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            freeze = exact if f.metadata.get("exact") else rounded
            object.__setattr__(self, f.name, freeze(getattr(self, f.name)))

    def to_json(self) -> dict[str, Any]:
        """The JSON report's plain data for this result."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if not f.metadata.get("json", True):
                continue
            if f.metadata.get("omit_when_empty") and (value is None or value in ((), {})):
                continue
            out[f.name] = plain(value)
        return out


@dataclass(frozen=True)
class ProbeStats(Result):
    """Summary statistics of one probe (``None`` where undefined)."""

    initial_loss: float | None = None
    final_loss: float | None = None
    min_loss: float | None = None
    max_grad_norm: float | None = None
    median_grad_norm: float | None = None
    clip_fraction: float | None = None
    median_update_ratio: float | None = None


@dataclass(frozen=True)
class LayerSummary(Result):
    """One probe's per-layer gradient norms over the steps it ran: ``names`` in depth order
    and ``grad_norm`` ``min``/``median``/``max`` aligned with them (``None`` where a layer
    never had a finite norm)."""

    names: tuple[str, ...] = ()
    grad_norm: Mapping[str, tuple[float | None, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CellSummary(Result):
    """One (batch size, lr) cell of the grid over its seeds (for renderers; not in JSON)."""

    batch_size: int
    lr: float = field(metadata=EXACT)
    seeds: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()
    # The median of the seeds' final losses (None when no seed has one).
    median_final_loss: float | None = None


@dataclass(frozen=True)
class StabilityMargin(Result):
    """max stable LR / target_lr at the judged batch size (the worst one)."""

    target_lr: float = field(metadata=EXACT)
    batch_size: int
    max_stable_lr: float | None = field(metadata=EXACT)
    margin: float | None
    by_batch_size: Mapping[str, float | None]


@dataclass(frozen=True)
class LRSensitivity(Result):
    """Wortsman et al. (2023) LR sensitivity of one batch size."""

    lr_sensitivity: float | None
    best_loss: float | None
    initial_loss: float | None
    normalised: float | None


@dataclass(frozen=True)
class FragileCell(Result):
    """A cell where some seeds diverged and others did not."""

    batch_size: int
    lr: float = field(metadata=EXACT)
    diverged_seeds: tuple[int, ...]
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class ClippingSummary(Result):
    """Clip fractions and the recommended clip threshold."""

    grad_clip: float | None = field(metadata=EXACT)
    percentile: float = field(metadata=EXACT)
    recommended_clip: float | None
    recommended_clip_by_batch_size: Mapping[str, float | None]
    max_clip_fraction: float | None


@dataclass(frozen=True)
class InitSummary(Result):
    """What the init checks measured, per seed."""

    initial_loss: Mapping[str, float | None]
    expected_initial_loss: float | None
    output_rms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class CurvatureCell(Result):
    """One batch size: the LR ceiling predicted from init sharpness beside what was seen."""

    predicted_lr_ceiling: float | None
    init_sharpness: float | None
    init_preconditioned_sharpness: float | None
    observed_max_stable_lr: float | None = field(metadata=EXACT)
    observed_min_diverged_lr: float | None = field(metadata=EXACT)
    max_eos_ratio: float | None


@dataclass(frozen=True)
class Hint(Result):
    """A hint every audit gets, shown once in the summary rather than as a finding."""

    code: str
    text: str


@dataclass(frozen=True)
class CurvatureSummary(Result):
    """Sharpness at init, the predicted LR ceilings, the noise scale."""

    rule: str | None
    limit: str | None
    full_batch: bool | None
    probe_batch: int | None
    init_sharpness: float | None
    b_simple: float | None
    critical_batch_size_hint: float | None
    noise_scale: Mapping[str, Any]
    lipschitz_init: float | None
    by_batch_size: Mapping[str, CurvatureCell]
    hints: tuple[Hint, ...] = field(default=(), metadata=OMIT_WHEN_EMPTY)

    @property
    def adaptive(self) -> bool:
        """Whether the limit applies to the preconditioned sharpness (Adam, RMSprop)."""
        return self.rule in ("adam", "rmsprop")


@dataclass(frozen=True)
class Recommendation(Result):
    """One setting recommended for the real run."""

    what: str  # learning_rate | grad_clip | warmup_steps
    value: float
    text: str
    batch_size: int | None = field(default=None, metadata=OMIT_WHEN_EMPTY)


@dataclass(frozen=True)
class SweepSummary(Result):
    """Everything the grid as a whole says: the JSON report's ``summary``."""

    probes: int
    by_status: Mapping[str, int]
    # The largest LR that trained cleanly (healthy) on every seed, per batch size ...
    max_stable_lr: Mapping[str, float | None] = field(metadata=EXACT)
    # ... and the smallest LR at which a probe diverged: the two edges of the boundary.
    min_diverging_lr: Mapping[str, float | None] = field(metadata=EXACT)
    stability_margin: StabilityMargin | None
    lr_sensitivity: Mapping[str, LRSensitivity]
    seed_spread: Mapping[str, float]
    max_seed_spread: float | None
    fragile_cells: tuple[FragileCell, ...]
    boundary_found: Mapping[str, bool]
    batch_size_exponent: float | None
    clipping: ClippingSummary | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    gradient_flow_at_init: Mapping[str, float] = field(default_factory=dict)
    oom_batch_sizes: tuple[int, ...] = ()
    init: InitSummary | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    curvature: CurvatureSummary | None = field(default=None, metadata=OMIT_WHEN_EMPTY)
    recommendations: tuple[Recommendation, ...] = ()
    cells: tuple[CellSummary, ...] = field(default=(), metadata=NOT_IN_JSON)

    def cell(self, batch_size: int, lr: float) -> CellSummary | None:
        """The summary of one grid cell (None when nothing ran there)."""
        return next((c for c in self.cells if c.batch_size == batch_size and c.lr == lr), None)

    @property
    def no_stable_lr(self) -> list[str]:
        """Batch sizes (as the JSON keys) at which no swept LR was stable."""
        return [bs for bs, lr in self.max_stable_lr.items() if lr is None]
