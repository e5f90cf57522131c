"""Start-up costs: which modules each command imports (never how long it takes).

Each command runs in a fresh interpreter through a small wrapper that calls the CLI and then
writes ``sys.modules`` to a file, so a heavy import that crept onto a path fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import grad, vmap

from stabcheck.problem import vmapped_cross_entropy
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = """\
import gc, json, sys
out, args = sys.argv[1], sys.argv[2:]
from stabcheck.cli import cli
code = cli.main(args, prog_name="stabcheck", standalone_mode=False)
# stabcheck.nodynamo's stand-in holds the name torch._dynamo: it is not the real module.
real = [name for name, mod in sys.modules.items() if type(mod).__name__ != "_Deferred"]
with open(out, "w", encoding="utf-8") as fh:
    json.dump({"code": code, "modules": sorted(real), "gc_enabled": gc.isenabled(),
               "frozen": gc.get_freeze_count()}, fh)
"""
# Never needed by the commands that only parse arguments or re-render a finished report.
HEAVY = ("torch", "transformers", "pandas", "pyarrow", "matplotlib", "sympy")
# Never on an audit of the built-in MLP (compile is not asked for, no table data, no plots).
NOT_ON_AUDIT = ("torch._dynamo", "torch.fx.experimental.symbolic_shapes", "sympy",
                "transformers", "pandas", "pyarrow", "matplotlib", "ray")


def imported(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    """Run ``stabcheck ARGS`` in a fresh interpreter: its exit code and ``sys.modules``."""
    code, modules, _ = imported_with_gc(tmp_path, *args)
    return code, modules


def imported_with_gc(tmp_path: Path, *args: str) -> tuple[int, set[str], dict[str, Any]]:
    """:func:`imported`, and the garbage collector's state after the command."""
    dump = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("GITHUB_STEP_SUMMARY", None)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(dump), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(dump.read_text(encoding="utf-8"))
    return data["code"], set(data["modules"]), {"enabled": data["gc_enabled"],
                                                 "frozen": data["frozen"]}


def present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in modules]


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["audit", "--help"],
                                  ["report", "--help"]])
def test_argument_only_commands_import_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    code, modules = imported(tmp_path, *args)
    assert code == 0
    # Not even the config machinery: pydantic, yaml, numpy, rich.
    assert present(modules, (*HEAVY, "pydantic", "yaml", "numpy", "rich")) == []
    assert "stabcheck.journal" not in modules and "stabcheck.config" not in modules


def test_explain_needs_no_torch(tmp_path: Path) -> None:
    code, modules = imported(tmp_path, "explain", "SC101")  # the thresholds: pydantic, no torch
    assert code == 0
    assert present(modules, HEAVY) == []


def test_import_stabcheck_is_light_and_keeps_its_names() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys, stabcheck; "
                           "print(sorted(m for m in ('torch', 'pydantic', 'click', 'numpy') "
                           "if m in sys.modules)); print(stabcheck.__all__)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded, names = proc.stdout.splitlines()
    assert loaded == "[]"
    import stabcheck

    assert names == str(stabcheck.__all__)

    for name in stabcheck.__all__:  # the lazy attributes still resolve
        assert getattr(stabcheck, name) is not None


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str], set[str]]:
    """One tiny audit and one ``validate`` in fresh interpreters: the results directory and
    the modules each imported."""
    tmp = tmp_path_factory.mktemp("startup")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY, sort_keys=False), encoding="utf-8")
    code, validated = imported(tmp, "validate", str(config))
    assert code == 0
    code, modules, collector = imported_with_gc(tmp, "audit", str(config), "--out",
                                                str(tmp / "out"), "-q", "--format", "text")
    assert code == 0
    assert (tmp / "out" / "probes.jsonl").exists()
    # The heavy imports ran with the collector paused, then were frozen out of its reach;
    # it collects again for the user's code and everything after.
    assert collector["enabled"] and collector["frozen"] > 10_000
    return tmp / "out", validated, modules


def test_audit_imports_only_what_it_needs(audited: tuple[Path, set[str], set[str]]) -> None:
    _, _, modules = audited
    assert "torch" in modules and "stabcheck.engine.vectorized" in modules
    assert present(modules, NOT_ON_AUDIT) == []
    # A small grid trains in this process (the auto executor): no worker machinery, and no
    # fork server importing torch a second time beside it.
    assert "stabcheck.executors.local" in modules
    assert present(modules, ("stabcheck.executors.process", "stabcheck.executors.preload",
                             "stabcheck.executors.worker", "multiprocessing.forkserver")) == []


def test_validate_imports_no_dynamo(audited: tuple[Path, set[str], set[str]]) -> None:
    _, modules, _ = audited
    assert "torch" in modules  # it builds the model and runs one step
    assert present(modules, NOT_ON_AUDIT) == []


def test_report_needs_no_torch(tmp_path: Path,
                               audited: tuple[Path, set[str], set[str]]) -> None:
    out, _, _ = audited
    for fmt in ("text", "json", "markdown", "junit", "html"):
        code, modules = imported(tmp_path, "report", str(out), "--format", fmt, "-q")
        assert code == 0
        assert present(modules, HEAVY) == [], fmt
        # Nor the config schema and YAML: the report is re-rendered from its JSON/JSONL.
        assert present(modules, ("stabcheck.config", "stabcheck.schema", "yaml")) == [], fmt
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["environment"]["torch"] == torch.__version__  # still recorded by audit


@pytest.mark.parametrize("shape", [(24, 5), (4, 6, 5)])
def test_vmapped_cross_entropy_is_torch_own(shape: tuple[int, ...]) -> None:
    """Under vmap the built-in cross-entropy takes torch's own decomposition's ops: the same
    loss and gradients, bit for bit, ``ignore_index=-100`` included."""
    from stabcheck.problem import _builtin_criterion

    ce = _builtin_criterion("cross_entropy")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, *shape[:-1], 7, generator=gen)
    w = torch.randn(3, 7, shape[-1], generator=gen)
    target = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    target.view(-1)[1] = -100

    def ours(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return ce(x @ w, target)

    def theirs(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = x @ w
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    assert torch.equal(vmap(ours)(w, x), vmap(theirs)(w, x))
    assert torch.equal(vmap(grad(ours))(w, x), vmap(grad(theirs))(w, x))
    # Outside vmap the loss is F.cross_entropy itself.
    assert torch.equal(ours(w[0], x[0]), theirs(w[0], x[0]))
    logits = (x[0] @ w[0]).reshape(-1, shape[-1])
    assert torch.allclose(vmapped_cross_entropy(logits, target.reshape(-1)),
                          F.cross_entropy(logits, target.reshape(-1)), rtol=1e-6, atol=0)


LEAVES_OPEN = """
import atexit
from pathlib import Path
from torch import nn

HERE = Path(__file__).parent
LOG = open(HERE / "left-open.txt", "w", encoding="utf-8")  # never closed, never flushed
LOG.write("written by the factory module\\n")
atexit.register(lambda: (HERE / "atexit.txt").write_text("ran", encoding="utf-8"))

def build():
    return nn.Linear(4, 3)
"""


def test_the_cli_skips_teardown_but_runs_atexit_and_flushes_open_files(tmp_path: Path) -> None:
    """``stabcheck`` ends with ``os._exit`` (exit_process): the user's atexit callbacks still
    run and a file their code left open still gets what was written to it."""
    (tmp_path / "leaves_open.py").write_text(LEAVES_OPEN, encoding="utf-8")
    cfg = {**TINY, "model": {"factory": "./leaves_open.py:build", "kwargs": {}},
           "sweep": {"learning_rates": [0.01], "seeds": [0], "batch_sizes": [16]},
           "probe": {"steps": 3, "device": "cpu"}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "stabcheck", "audit", str(config), "--out",
                           str(tmp_path / "out"), "-q", "--exit-zero"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr
    assert "Verdict:" in proc.stderr  # stderr flushed before the exit
    assert (tmp_path / "atexit.txt").read_text(encoding="utf-8") == "ran"
    assert (tmp_path / "left-open.txt").read_text(encoding="utf-8") == (
        "written by the factory module\n")
