"""Engines run cohorts of probes. Each reports one :class:`ProbeRecord` per probe.

* ``sequential`` — the reference: one probe at a time, a plain PyTorch loop
  (:mod:`stabcheck.engine.sequential`);
* ``vectorized`` — a cohort's probes stacked and run as one ``vmap``-ed step
  (:mod:`stabcheck.engine.vectorized`); :func:`~stabcheck.engine.vectorized.select_engine`
  picks it when the model and optimizer allow and says why when they do not;
* ``custom-step`` — a config's own training step (``step:``), always sequential
  (:mod:`stabcheck.engine.custom`).

Both produce identical record layouts; the choice only changes speed. The contract (settings,
events, the registry) is :mod:`stabcheck.engine.base`; importing this package imports no
torch, so the CLI can list the engines cheaply. Leaves first: ``base`` → ``failures``,
``instruments`` → ``stats``, ``loop`` → ``curvature`` → ``nanlocate``, ``sequential`` →
``vectorized``.
"""

from __future__ import annotations

from stabcheck.engine.base import (
    ENGINE_CHOICES,
    ENGINES,
    Engine,
    EngineEvents,
    EngineSettings,
    EngineSpec,
    Events,
    NoteSink,
    RecordSink,
    StepSink,
    get_engine,
)

__all__ = ["ENGINES", "ENGINE_CHOICES", "Engine", "EngineEvents", "EngineSettings",
           "EngineSpec", "Events", "NoteSink", "RecordSink", "StepSink", "get_engine"]
