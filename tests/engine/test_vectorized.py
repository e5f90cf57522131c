"""The vectorized engine against the sequential reference: same records, faster.

Fidelity: for the mlp, cnn and transformer built-ins and for SGD, momentum (with weight
decay, Nesterov, warmup), Adam and AdamW, every per-probe trace of the vectorized engine
matches the sequential engine's over 50 steps within float32 tolerance. Then: divergence,
clipping, timeouts, errors, cohort splitting, and every fallback with its one-line reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stabcheck.audit import AuditOptions, run_audit
from stabcheck.config import load_config
from stabcheck.engine import EngineSettings, Events
from stabcheck.engine.sequential import SequentialEngine
from stabcheck.engine.vectorized import VectorizedEngine, max_members, memory, select_engine
from stabcheck.engine.vectorized.engine import RUNAWAY_NOTE
from stabcheck.plan import make_cohorts, plan_probes
from stabcheck.problem import Problem, build_problem
from stabcheck.records import ProbeRecord

RTOL = 1e-4
LAYER_RTOL = 1e-3
COLUMNS = ("loss", "grad_norm", "clipped", "update_ratio", "param_norm", "lr", "skipped")

MLP: dict[str, Any] = {}  # conftest's TINY: mlp 4 → 8 → 3 on blobs
CNN: dict[str, Any] = {
    "model": {"builtin": "cnn", "kwargs": {"in_channels": 1, "channels": [4, 6],
                                           "num_classes": 3}},
    "data": {"builtin": "images", "kwargs": {"n_samples": 64, "image_size": 8,
                                             "n_classes": 3}},
}
TRANSFORMER: dict[str, Any] = {
    "model": {"builtin": "transformer", "kwargs": {"vocab_size": 128, "seq_len": 8,
                                                   "d_model": 16, "n_layers": 1,
                                                   "n_heads": 2, "mlp_ratio": 2}},
    "data": {"builtin": "text", "kwargs": {"seq_len": 8, "stride": 8, "max_samples": 96}},
}
SGD = {"name": "sgd", "kwargs": {}}
MOMENTUM = {"name": "sgd", "kwargs": {"momentum": 0.9, "weight_decay": 1e-3}}
NESTEROV = {"name": "sgd", "kwargs": {"momentum": 0.9, "nesterov": True, "dampening": 0.0}}
ADAM = {"name": "adam", "kwargs": {"betas": [0.9, 0.99], "weight_decay": 1e-3}}
ADAMW = {"name": "adamw", "kwargs": {"weight_decay": 0.05}}


def _problem(write_config, updates: dict[str, Any]) -> tuple[Problem, Any]:
    loaded = load_config(write_config(updates))
    return build_problem(loaded), loaded.config


def _run(engine: Any, problem: Problem, config: Any, settings: EngineSettings | None = None,
         on_note: Callable[[str], None] | None = None) -> dict[int, ProbeRecord]:
    settings = settings or EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    keys = {p.index: f"k{p.index}" for p in probes}
    data = problem.data.to(problem.device)
    records: list[ProbeRecord] = []
    for cohort in make_cohorts(probes):
        engine.run_cohort(problem, cohort, settings, keys, data, Events(records.append,
                                                                        on_note=on_note))
    assert sorted(r.index for r in records) == [p.index for p in probes]
    return {r.index: r for r in records}


def _assert_same(seq: dict[int, ProbeRecord], vec: dict[int, ProbeRecord]) -> None:
    for index, a in seq.items():
        b = vec[index]
        # (a member whose loss ran away is re-run by the sequential engine, on purpose)
        assert a.engine == "sequential"
        assert b.engine == "vectorized" or RUNAWAY_NOTE in b.notes
        assert (b.outcome, b.steps_run, b.layer_names) == (a.outcome, a.steps_run, a.layer_names)
        assert (b.first_nonfinite_step, b.nonfinite_what, b.nonfinite_kind) == \
            (a.first_nonfinite_step, a.nonfinite_what, a.nonfinite_kind)
        for column in COLUMNS:
            np.testing.assert_allclose(b.series(column), a.series(column), rtol=RTOL,
                                       atol=1e-7, err_msg=f"{a.label}: {column}")
        # A layer's gradient is a sum over the batch that can cancel to a small result, which
        # amplifies the (legitimate) rounding differences of batched kernels: 1e-3 here.
        np.testing.assert_allclose(b.layer_matrix(), a.layer_matrix(), rtol=LAYER_RTOL,
                                   atol=1e-7, err_msg=f"{a.label}: per-layer gradient norms")
        # The Lipschitz bound (product of weight spectral norms) at init and at the end.
        assert a.curvature is not None and b.curvature is not None
        for when in ("lipschitz_init", "lipschitz_final"):
            if a.curvature[when] is None:
                assert b.curvature[when] is None, f"{a.label}: {when}"
            else:
                assert b.curvature[when] == pytest.approx(a.curvature[when], rel=1e-3), \
                    f"{a.label}: {when}"


PROBE = {"steps": 50, "flush_every": 20, "device": "cpu"}


@pytest.mark.parametrize("model", [MLP, CNN, TRANSFORMER], ids=["mlp", "cnn", "transformer"])
@pytest.mark.parametrize("optimizer", [SGD, MOMENTUM, ADAM], ids=["sgd", "momentum", "adam"])
def test_traces_match_sequential(write_config, model: dict[str, Any],
                                 optimizer: dict[str, Any]) -> None:
    # Learning rates well inside the stable range: near the edge of stability a trajectory is
    # chaotic and float32 rounding differences grow until only its statistics agree.
    lrs = {"adam": [0.003, 0.01], "sgd": [0.05, 0.2]}[optimizer["name"]]
    if optimizer["kwargs"].get("momentum"):
        lrs = [0.005, 0.02]  # momentum 0.9 multiplies the effective step by ten
    problem, config = _problem(write_config, {
        **model, "optimizer": optimizer, "probe": PROBE,
        "sweep": {"learning_rates": lrs, "seeds": [0, 1], "batch_sizes": [16]}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    assert all(r.outcome == "completed" and r.steps_run == 50 for r in seq.values())
    _assert_same(seq, vec)


@pytest.mark.parametrize("optimizer", [NESTEROV, ADAMW], ids=["nesterov", "adamw"])
def test_more_optimizers_warmup_and_clipping_match(write_config,
                                                   optimizer: dict[str, Any]) -> None:
    lrs = [0.003, 0.03] if optimizer["name"] == "adamw" else [0.02, 0.1]
    problem, config = _problem(write_config, {
        "optimizer": optimizer, "probe": {**PROBE, "warmup_steps": 10, "grad_clip": 0.5},
        "sweep": {"learning_rates": lrs, "seeds": [0, 1], "batch_sizes": [16, 32]}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    _assert_same(seq, vec)
    clipped = np.concatenate([r.series("clipped") for r in vec.values()])
    assert 0 < clipped.mean() < 1  # the clip threshold bites on some steps, not all


@pytest.mark.parametrize("optimizer", [MOMENTUM, ADAM], ids=["momentum", "adam"])
def test_curvature_tracking_matches_sequential(write_config,
                                               optimizer: dict[str, Any]) -> None:
    # Sharpness every 7 steps (so measurements fall between flushes and on one), a member
    # that diverges (its measurements stop where the sequential engine's do), and training
    # that tracking must not perturb.
    lrs = [0.003, 0.01, 50.0] if optimizer["name"] == "adam" else [0.005, 0.02, 200.0]
    sweep = {"learning_rates": lrs, "seeds": [0, 1], "batch_sizes": [16]}
    probe = {**PROBE, "steps": 30, "flush_every": 14, "curvature_every": 7}
    problem, config = _problem(write_config, {"optimizer": optimizer, "probe": probe,
                                              "sweep": sweep})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    _assert_same(seq, vec)
    _, plain = _problem(write_config, {"optimizer": optimizer, "sweep": sweep,
                                       "probe": {**probe, "curvature_every": None}})
    untracked = _run(VectorizedEngine(), problem, plain)
    for index, a in seq.items():
        b = vec[index]
        assert a.curvature is not None and b.curvature is not None
        assert b.curvature["steps"] == a.curvature["steps"], a.label
        if a.outcome == "completed":
            assert a.curvature["steps"] == [0, 7, 14, 21, 28]
        else:  # nothing measured on parameters past the first non-finite step
            assert a.curvature["steps"] and \
                max(a.curvature["steps"]) <= a.first_nonfinite_step
        for key in ("sharpness", "preconditioned", "limit", "eos_ratio"):
            for x, y in zip(a.curvature[key], b.curvature[key], strict=True):
                assert (x is None) == (y is None), f"{a.label}: {key}"
                if x is not None:
                    assert y == pytest.approx(x, rel=1e-3), f"{a.label}: {key}"
        np.testing.assert_array_equal(b.series("loss"), untracked[index].series("loss"))
    # Adam's bounded steps make lr=50 run away without NaN; heavy-ball goes non-finite.
    assert any(r.outcome == "nonfinite" for r in vec.values()) == (optimizer["name"] != "adam")
    assert any(r.curvature["preconditioned"][-1] is not None
               for r in vec.values()) == (optimizer["name"] == "adam")


def test_vmap_grad_mode_matches_too(write_config) -> None:
    problem, config = _problem(write_config, {"optimizer": MOMENTUM, "probe": PROBE})
    _assert_same(_run(SequentialEngine(), problem, config),
                 _run(VectorizedEngine(grad_mode="vmap_grad"), problem, config))


def test_diverging_member_is_frozen_with_the_same_first_nonfinite_step(write_config) -> None:
    problem, config = _problem(write_config, {
        "optimizer": MOMENTUM, "probe": {**PROBE, "steps": 40, "flush_every": 7},
        "sweep": {"learning_rates": [0.05, 200.0], "seeds": [0, 1], "batch_sizes": [16]}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    diverged = [r for r in vec.values() if r.outcome == "nonfinite"]
    assert {r.lr for r in diverged} == {200.0} and len(diverged) == 2
    _assert_same(seq, vec)  # same first non-finite step, what and kind; healthy ones complete
    for index, record in vec.items():
        assert record.nonfinite_module == seq[index].nonfinite_module
        assert len(record.series("loss")) == record.steps_run


HUGE_GRADIENT = """
    import torch
    from torch import nn
    class Huge(nn.Module):
        '''loss = sum(w) * 1.5e19: every gradient element is 1.5e19, finite in float32, but
        the sum of their squares (9e38) is not — float64 norms (2.1e19) are finite.'''
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))
        def forward(self, x):
            return (self.w.sum() * 1.5e19) + 0 * x.sum()
    def build():
        return Huge()
    def data(n=8):
        return (torch.ones(n, 1),)
"""


def test_a_float32_norm_overflow_is_settled_by_the_exact_replay(
        write_config, write_module) -> None:
    write_module("huge.py", HUGE_GRADIENT)
    problem, config = _problem(write_config, {
        "model": {"builtin": None, "factory": "./huge.py:build", "kwargs": {}},
        "data": {"builtin": None, "factory": "./huge.py:data", "kwargs": {}},
        "loss": "model", "optimizer": SGD,
        "sweep": {"learning_rates": [1e-3], "seeds": [0, 1], "batch_sizes": [4]},
        "probe": {**PROBE, "steps": 12, "flush_every": 5}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    assert {r.outcome for r in seq.values()} == {"completed"}  # finite in float64 throughout
    _assert_same(seq, vec)
    assert all(r.notes and "replayed with the sequential engine" in r.notes[0]
               for r in vec.values())


def test_timeout_marks_every_member(write_config) -> None:
    # The limit applies to the probes only: the trial forward pass at build time (which
    # probe.timeout_s also bounds) runs without it.
    problem, config = _problem(write_config, {"probe": {**PROBE, "steps": 400}})
    config = config.model_copy(update={"probe": config.probe.model_copy(
        update={"timeout_s": 1e-6})})
    vec = _run(VectorizedEngine(), problem, config)
    assert {r.outcome for r in vec.values()} == {"timeout"}
    assert all(r.steps_run == 1 and len(r.series("loss")) == 1 for r in vec.values())
    assert all("timeout_s" in (r.error or {}).get("message", "") for r in vec.values())


def test_cohorts_split_to_a_size_limit_give_the_same_records(
        write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    problem, config = _problem(write_config, {"probe": PROBE, "sweep": {
        "learning_rates": [0.01, 0.03, 0.1], "seeds": [0, 1], "batch_sizes": [16]}})
    whole = _run(VectorizedEngine(), problem, config)
    split = _run(VectorizedEngine(max_cohort=4), problem, config)
    for index, record in whole.items():
        assert split[index].trace["loss"] == pytest.approx(record.trace["loss"], rel=RTOL)
    settings = EngineSettings.from_config(config.probe)
    probes = plan_probes(config)
    assert max_members(problem, settings, problem.data, probes) == 6  # a tiny MLP: all fit
    monkeypatch.setattr(memory, "_available_host_bytes", lambda: 0)
    assert max_members(problem, settings, problem.data, probes) == 1  # no room: one at a time


def test_an_error_mid_run_reruns_the_cohort_sequentially(write_config, write_module) -> None:
    write_module("flaky.py", """
        from torch import nn
        class Flaky(nn.Linear):
            calls = 0
            def forward(self, x):
                Flaky.calls += 1
                if Flaky.calls == 6:  # once, in the middle of the stacked run
                    raise RuntimeError("transient failure")
                return super().forward(x)
        def build():
            return Flaky(4, 3)
    """)
    problem, config = _problem(write_config, {
        "model": {"builtin": None, "factory": "./flaky.py:build", "kwargs": {}},
        "probe": PROBE})
    notes: list[str] = []  # the audit journals these, so the report shows them
    records = _run(VectorizedEngine(), problem, config, on_note=notes.append)
    assert len(notes) == 1 and "RuntimeError: transient failure" in notes[0]
    assert {r.engine for r in records.values()} == {"sequential"}
    assert {r.outcome for r in records.values()} == {"completed"}
    assert all("re-run with the sequential engine" in r.notes[0] for r in records.values())


DATA_DEPENDENT = """
    import torch
    from torch import nn
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
        def forward(self, x):
            h = self.a(x)
            if h.mean() > 0:  # data-dependent control flow: vmap cannot batch it
                h = 2 * h
            return h
    def build():
        return Branchy()
"""
UNUSED_PARAMETER = """
    from torch import nn
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 3), nn.Linear(4, 3)
        def forward(self, x):
            return self.used(x)
    def build():
        return Unused()
"""
CACHED_WEIGHT = """
    import torch
    from torch import nn
    class Cached(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.gain = nn.Parameter(torch.ones(3))
            self._refs = [self.gain]  # a cached reference that no parameter swap can see
        def forward(self, x):
            return self.lin(x) * self._refs[0]
    def build():
        return Cached()
"""
CUSTOM_OPTIMIZER = """
    import torch
    class MySGD(torch.optim.SGD):
        pass
"""


def test_a_failing_record_sink_is_not_answered_with_a_rerun(write_config) -> None:
    problem, config = _problem(write_config, {"probe": PROBE})

    def sink(record: ProbeRecord) -> None:
        raise OSError("disk full")

    probes = plan_probes(config)
    with pytest.raises(OSError, match="disk full"):
        VectorizedEngine().run_cohort(problem, make_cohorts(probes)[0],
                                      EngineSettings.from_config(config.probe),
                                      {p.index: "k" for p in probes}, problem.data,
                                      Events(sink))


@pytest.mark.parametrize("case,expect", [
    ({"model": {"builtin": None, "factory": "./branchy.py:build", "kwargs": {}}},
     "does not run under vmap"),
    ({"model": {"builtin": None, "factory": "./unused.py:build", "kwargs": {}}},
     "parameter spare.weight (+1 more) gets no gradient"),
    ({"model": {"builtin": None, "factory": "./cached.py:build", "kwargs": {}}},
     "disagrees with the sequential engine"),
    ({"optimizer": {"name": "./myopt.py:MySGD", "kwargs": {}}}, "custom optimizer"),
    # (sgd with nesterov and no momentum is now refused by validation: tests/attack)
    ({"optimizer": {"name": "rmsprop", "kwargs": {"maximize": True}}},
     "rmsprop option maximize=True has no vectorized"),
    ({"optimizer": {"name": "adam", "kwargs": {"amsgrad": True}}}, "amsgrad=True"),
], ids=["control-flow", "unused-parameter", "cached-weight", "custom-optimizer",
        "rmsprop-maximize", "amsgrad"])
def test_fallbacks_run_sequentially_with_a_one_line_note(
        write_config, write_module, tmp_path: Path, case: dict[str, Any], expect: str) -> None:
    write_module("branchy.py", DATA_DEPENDENT)
    write_module("myopt.py", CUSTOM_OPTIMIZER)
    write_module("unused.py", UNUSED_PARAMETER)
    write_module("cached.py", CACHED_WEIGHT)
    problem, config = _problem(write_config, {"probe": PROBE, **case})
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, SequentialEngine) and engine.fallback_reason is not None
    assert note is not None and engine.note == note
    assert expect in note and "\n" not in note
    explicit, again = select_engine(problem, "vectorized", settings, problem.data,
                                    plan_probes(config))
    assert isinstance(explicit, SequentialEngine) and explicit.note == again == note
    # End to end: the note reaches the report, and every probe ran sequentially.
    loaded = load_config(write_config({"probe": {**PROBE, "steps": 6}, **case}))
    result, _ = run_audit(loaded, AuditOptions(out_dir=tmp_path / "out"))
    assert note in result.notes
    assert {p.record.engine for p in result.diagnosis.probes} == {"sequential"}


def test_auto_picks_vectorized_and_audit_records_say_so(write_config, tmp_path: Path) -> None:
    loaded = load_config(write_config({"probe": {**PROBE, "steps": 8}}))
    problem = build_problem(loaded)
    settings = EngineSettings.from_config(loaded.config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data,
                                 plan_probes(loaded.config))
    assert isinstance(engine, VectorizedEngine) and note is None
    sequential, _ = select_engine(problem, "sequential", settings, problem.data, [])
    assert isinstance(sequential, SequentialEngine)
    result, _ = run_audit(loaded, AuditOptions(out_dir=tmp_path / "out"))
    assert {p.record.engine for p in result.diagnosis.probes} == {"vectorized"}
    assert not any("sequential engine used" in n for n in result.notes)


def test_bfloat16_autocast_runs_and_stays_close(write_config) -> None:
    problem, config = _problem(write_config, {"optimizer": MOMENTUM,
                                              "probe": {**PROBE, "steps": 10,
                                                        "dtype": "bfloat16"}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    for index, record in vec.items():
        assert record.outcome == "completed"
        np.testing.assert_allclose(record.series("loss"), seq[index].series("loss"), rtol=2e-2)


@pytest.mark.parametrize("optimizer", [MOMENTUM, ADAM], ids=["momentum", "adam"])
@pytest.mark.parametrize("head_scale", [1.0, 300.0], ids=["no-overflow", "overflow"])
def test_float16_loss_scaling_per_member_matches_gradscaler(
        write_config, optimizer: dict[str, Any], head_scale: float) -> None:
    # head_scale 300 makes the scaled fp16 backward overflow for the first steps, so each
    # member skips steps and halves its own scale, as torch.amp.GradScaler does per probe.
    # The skipped steps must agree exactly; the losses (logits in the hundreds, in fp16)
    # only to fp16's rounding, which batched and single kernels do differently.
    model = {"builtin": "mlp", "kwargs": {"in_features": 4, "hidden": [8], "out_features": 3,
                                          "head_scale": head_scale}}
    problem, config = _problem(write_config, {
        "model": model, "optimizer": optimizer,
        "probe": {**PROBE, "steps": 30, "flush_every": 10, "dtype": "float16"},
        "sweep": {"learning_rates": [0.003, 0.01], "seeds": [0, 1], "batch_sizes": [16]}})
    settings = EngineSettings.from_config(config.probe)
    engine, note = select_engine(problem, "auto", settings, problem.data, plan_probes(config))
    assert isinstance(engine, VectorizedEngine) and note is None
    seq = _run(SequentialEngine(), problem, config)
    # (runaway members kept stacked: this test is about the stacked loss scaling)
    vec = _run(VectorizedEngine(rerun_runaways=False), problem, config)
    for index, a in seq.items():
        b = vec[index]
        assert b.engine == "vectorized" and (b.outcome, b.steps_run) == (a.outcome, a.steps_run)
        np.testing.assert_array_equal(b.series("skipped"), a.series("skipped"), a.label)
        np.testing.assert_allclose(b.series("loss"), a.series("loss"),
                                   rtol=2e-3 if head_scale == 1.0 else 0.1, err_msg=a.label)
    skipped = sum(int(np.nansum(r.series("skipped"))) for r in vec.values())
    assert (skipped > 0) == (head_scale > 1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_matches_sequential(write_config, dtype: str) -> None:
    problem, config = _problem(write_config, {
        **TRANSFORMER, "optimizer": ADAM,
        "probe": {**PROBE, "device": "cuda", "dtype": dtype},
        "sweep": {"learning_rates": [0.003, 0.01], "seeds": [0, 1], "batch_sizes": [16]}})
    seq = _run(SequentialEngine(), problem, config)
    vec = _run(VectorizedEngine(), problem, config)
    if dtype == "float32":
        # TF32 and cuBLAS batching change rounding; allow for it, still per step.
        for index, record in vec.items():
            np.testing.assert_allclose(record.series("loss"), seq[index].series("loss"),
                                       rtol=1e-3)
    else:
        for index, record in vec.items():
            assert record.outcome == "completed"
            np.testing.assert_allclose(record.series("loss"), seq[index].series("loss"),
                                       rtol=3e-2)


@pytest.mark.parametrize("engine", ["sequential", "vectorized", "auto"])
def test_cli_engine_option(write_config, tmp_path: Path, engine: str) -> None:
    from click.testing import CliRunner

    from stabcheck.cli import cli

    path = write_config({"probe": {**PROBE, "steps": 6}})
    result = CliRunner().invoke(cli, ["audit", str(path), "--out", str(tmp_path / "r"),
                                      "--format", "json", "--engine", engine])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = "sequential" if engine == "sequential" else "vectorized"
    assert {p["engine"] for p in report["probes"]} == {expected}


def test_cli_shows_the_fallback_note(write_config, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stabcheck.cli import cli

    path = write_config({"probe": {**PROBE, "steps": 6},
                         "optimizer": {"name": "adam", "kwargs": {"amsgrad": True}}})
    result = CliRunner().invoke(cli, ["audit", str(path), "--out", str(tmp_path / "r"),
                                      "--format", "text"])
    lines = [line for line in result.stderr.splitlines()
             if "sequential engine used" in line and "amsgrad=True" in line]
    assert lines and all(line.startswith("note: ") for line in lines)
    bad = CliRunner().invoke(cli, ["audit", str(path), "--engine", "fast"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
