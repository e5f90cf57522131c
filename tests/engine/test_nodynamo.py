"""No ``torch._dynamo`` import on the audit's path unless something compiles (in subprocesses:
the stand-in is process-wide, and other tests may well have imported dynamo already)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, deep_update

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, tmp_path: Path) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("engine", ["sequential",  # torch.optim's step, zero_grad, ...
                                    pytest.param("vectorized", marks=pytest.mark.slow)])
def test_an_audit_imports_no_dynamo(tmp_path: Path, engine: str) -> None:
    config = deep_update(TINY, {"optimizer": {"name": "adam", "kwargs": {}},
                                "probe": {"curvature_every": 4}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    out = _run(f"""
        import sys
        from stabcheck.audit import audit
        result = audit("c.yaml", out_dir="out", engine={engine!r})
        assert result.exit_code in (0, 1)
        print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
        """, tmp_path)
    assert out.strip() == "['torch._dynamo']", out  # the stand-in, none of the real submodules


def test_compiling_after_an_audit_loads_the_real_dynamo(tmp_path: Path) -> None:
    out = _run("""
        import torch
        from stabcheck import nodynamo
        assert nodynamo.install()
        weight = torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        weight.grad = torch.ones(3)
        optimizer.step(); optimizer.zero_grad()
        assert not nodynamo.loaded()
        double = torch.compile(lambda x: 2 * x, backend="eager")
        assert double(torch.ones(2)).tolist() == [2.0, 2.0]
        assert nodynamo.loaded() and type(torch._dynamo).__name__ == "module"
        # the pass-throughs were forgotten: zero_grad is disabled by the real dynamo now
        plain = torch.optim.Optimizer.zero_grad.__wrapped__
        assert not hasattr(plain, "__dynamo_disable")
        weight.grad = torch.ones(3)
        optimizer.step(); optimizer.zero_grad()
        assert getattr(plain, "__dynamo_disable") is not plain
        print(weight.detach().tolist())
        """, tmp_path)
    assert [round(w, 6) for w in json.loads(out)] == [0.8, 0.8, 0.8]  # two plain SGD steps of 0.1
