"""The executor and engine registries: names without imports, specs that cross processes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from stabcheck.engine import ENGINE_CHOICES, ENGINES, EngineSpec, get_engine
from stabcheck.executors import EXECUTOR_CHOICES, EXECUTORS, get_executor


def test_choices_come_from_the_registries() -> None:
    assert ("auto", *EXECUTORS) == EXECUTOR_CHOICES
    assert set(ENGINE_CHOICES) - {"auto"} <= set(ENGINES)
    assert {get_executor(name).name for name in EXECUTORS} == set(EXECUTORS)
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        get_executor("dask")


def test_listing_the_registries_imports_no_torch() -> None:
    code = ("import sys; import stabcheck.cli, stabcheck.optimizers; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_an_engine_spec_survives_pickling_with_its_options() -> None:
    engine = get_engine("vectorized", max_cohort=3, grad_mode="vmap_grad", compile_step=False)
    spec = pickle.loads(pickle.dumps(engine.spec))
    rebuilt = spec.build()
    assert (rebuilt.name, rebuilt.max_cohort, rebuilt.grad_mode) == ("vectorized", 3,
                                                                      "vmap_grad")
    fallback = EngineSpec("sequential", {"fallback_reason": "custom optimizer"}).build()
    assert fallback.runs_cohort_together is False
    assert fallback.spec == EngineSpec("sequential", {"fallback_reason": "custom optimizer"})


def test_an_unknown_name_lists_the_known_ones_for_executors_and_optimizers() -> None:
    from stabcheck import optimizers
    from stabcheck.registry import UnknownName

    with pytest.raises(UnknownName, match=r"^unknown executor 'dask'; expected one of auto, "):
        get_executor("dask")
    with pytest.raises(KeyError, match=r"^unknown optimizer 'lion'; expected one of sgd, adam"):
        optimizers.get("lion")  # a KeyError as well as a ValueError
    assert optimizers.get("adamw").torch_class.__name__ == "AdamW"
    assert list(optimizers.OPTIMIZERS) == list(optimizers.BUILTIN_OPTIMIZERS)
