"""The sweep grid as probes, and probes grouped into cohorts that can share one step.

A probe is one short training run at one (learning rate, seed, batch size). Probes with the
same batch size share a model shape and a batch shape, so the vectorized engine can stack
them into one cohort and run them as one ``vmap``-ed step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not imported at run time: ``stabcheck report`` needs no config schema
    from stabcheck.config import AuditConfig


@dataclass(frozen=True, order=True)
class ProbeSpec:
    """One point of the grid. ``index`` is its position in the plan (stable across runs)."""

    batch_size: int
    lr: float
    seed: int
    index: int = 0

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``lr=0.1 seed=2 bs=32``."""
        return f"lr={self.lr:g} seed={self.seed} bs={self.batch_size}"

    def key(self, config_digest: str) -> str:
        """Digest of the config plus this probe's parameters: the journal's resume key."""
        blob = f"{config_digest}|{self.lr!r}|{self.seed}|{self.batch_size}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cohort:
    """Probes that share a batch size (and therefore tensor shapes)."""

    batch_size: int
    probes: tuple[ProbeSpec, ...]


def plan_probes(config: AuditConfig) -> list[ProbeSpec]:
    """Every (batch size, lr, seed) of the sweep, in a fixed order."""
    probes: list[ProbeSpec] = []
    for bs in sorted(config.sweep.batch_sizes):
        for lr in config.sweep.lr_values():
            for seed in config.sweep.seeds:
                probes.append(ProbeSpec(batch_size=bs, lr=lr, seed=seed, index=len(probes)))
    return probes


def make_cohorts(probes: list[ProbeSpec], max_size: int | None = None) -> list[Cohort]:
    """Group probes by batch size, split into chunks of at most ``max_size``."""
    by_bs: dict[int, list[ProbeSpec]] = {}
    for probe in probes:
        by_bs.setdefault(probe.batch_size, []).append(probe)
    cohorts = []
    for bs, members in sorted(by_bs.items()):
        step = max_size or len(members)
        for start in range(0, len(members), step):
            cohorts.append(Cohort(bs, tuple(members[start:start + step])))
    return cohorts


def config_digest(config: AuditConfig) -> str:
    """A digest of everything in the config that changes what a probe computes.

    ``fail_on``, ``thresholds``, ``target_lr``, ``target_batch_size`` and ``name`` only change
    the verdict, which is recomputed from the journal, so they are left out: tightening a
    threshold can resume.
    """
    volatile = {"fail_on", "thresholds", "target_lr", "target_batch_size", "name"}
    data: dict[str, Any] = config.model_dump(mode="json", exclude=volatile)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
