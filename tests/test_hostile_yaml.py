"""The hostile-input corpus (tests/hostile_yaml/): each file gets a one-line error and exit 2,
no traceback, and nothing it names is imported or run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabcheck import yamlsafe
from stabcheck.cli import cli

CORPUS = sorted((Path(__file__).parent / "hostile_yaml").glob("*.yaml"))


def run_audit_cli(path: Path, tmp_path: Path) -> tuple[int, list[str]]:
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a canary 'touch HOSTILE_CANARY' would land here
    try:
        result = CliRunner().invoke(cli, ["audit", str(path), "--out", str(tmp_path / "r")],
                                    catch_exceptions=False)
    finally:
        os.chdir(cwd)
    assert "Traceback" not in result.output
    return result.exit_code, result.stderr.strip().splitlines()


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_hostile_yaml_is_refused_with_one_line_and_exit_2(path: Path, tmp_path: Path) -> None:
    code, lines = run_audit_cli(path, tmp_path)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(path) in lines[0] or path.name in lines[0]
    assert not (tmp_path / "HOSTILE_CANARY").exists()
    assert "stabcheck_hostile_canary" not in sys.modules
    assert not (tmp_path / "r").exists()  # refused before any results directory was made


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"name: x\n" + b"# padding\n" * (yamlsafe.MAX_BYTES // 10 + 1))
    code, lines = run_audit_cli(path, tmp_path)
    assert code == 2 and len(lines) == 1 and "cap" in lines[0]


def test_user_code_is_imported_only_after_the_schema_validates(tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('IMPORTED').touch()\n"
        "def build():\n    raise SystemExit('ran')\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text("model: {factory: './evil.py:build'}\ndata: {builtin: blobs}\n"
                      "sweep: {learning_rates: [0.1]}\nprobe: {stesp: 3}\n", encoding="utf-8")
    code, lines = run_audit_cli(config, tmp_path)
    assert code == 2 and "unknown key 'stesp'" in lines[0]
    assert not (tmp_path / "IMPORTED").exists()


class _Evil:
    """Unpickling this runs a shell command (what a hostile checkpoint would carry)."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def _mlp_config(tmp_path: Path, checkpoint: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {builtin: mlp, checkpoint: " + checkpoint + ", kwargs: {in_features: 4, "
        "hidden: [8], out_features: 3}}\ndata: {builtin: blobs, kwargs: {n_features: 4, "
        "n_classes: 3, n_samples: 64}}\nsweep: {learning_rates: [0.1]}\n"
        "probe: {steps: 2, device: cpu}\n", encoding="utf-8")
    return config


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    import torch

    canary = tmp_path / "CHECKPOINT_CANARY"
    torch.save({"layers.0.linear.weight": _Evil(canary)}, tmp_path / "evil.pt")
    code, lines = run_audit_cli(_mlp_config(tmp_path, "evil.pt"), tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert "model.checkpoint: cannot load" in lines[0]
    assert not canary.exists()


def test_a_plain_state_dict_checkpoint_is_loaded(tmp_path: Path) -> None:
    import torch

    from stabcheck.config import load_config
    from stabcheck.problem import build_problem

    config = _mlp_config(tmp_path, "good.pt")
    loaded = load_config(config.parent / "config.yaml")
    config.write_text(config.read_text().replace("checkpoint: good.pt, ", ""))
    source = build_problem(load_config(config)).build_model()
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(0.25)
    torch.save(source.state_dict(), tmp_path / "good.pt")
    model = build_problem(loaded).build_model()
    assert all(torch.equal(p, torch.full_like(p, 0.25)) for p in model.parameters())
