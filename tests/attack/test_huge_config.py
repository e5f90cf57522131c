"""100 MB config files: refused from their size, before anything parses them (exit 2, one
line). The config's cap is ``yamlsafe.MAX_BYTES`` (1 MiB); a ``pyproject.toml`` found above
the config is capped at ``project.MAX_PYPROJECT_BYTES`` (10 MiB): before that cap, a 100 MB
one was parsed in full on every command (seconds and ~110 MB of memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stabcheck import project, yamlsafe
from tests.attack.helpers import one_line_error, run
from tests.conftest import TINY

HUNDRED_MB = 100 * 1024 * 1024
FILLER = b"# " + b"x" * 97 + b"\n"  # 100 bytes a line: a real file, not a sparse one


def _huge(path: Path, head: bytes) -> Path:
    with path.open("wb") as fh:
        fh.write(head)
        fh.write(FILLER * (HUNDRED_MB // len(FILLER)))
    return path


@pytest.mark.parametrize("command", ["audit", "validate"])
def test_a_100_mb_config_is_refused_from_its_size(tmp_path: Path, command: str) -> None:
    path = _huge(tmp_path / "config.yaml", yaml.safe_dump(TINY).encode())
    result = run(command, path, "--isolated", *(["--out", tmp_path / "r"]
                                                if command == "audit" else []))
    assert result.exit_code == 2, result.output
    error = one_line_error(result).strip().splitlines()[-1]
    assert f"more than the {yamlsafe.MAX_BYTES}-byte cap for a config" in error
    assert not (tmp_path / "r").exists()  # refused before anything was created


def test_a_100_mb_pyproject_above_the_config_is_refused_unless_isolated(
        tmp_path: Path, write_config) -> None:
    _huge(tmp_path / "pyproject.toml", b"[tool.stabcheck]\nfail_on = 'error'\n")
    path = write_config({"probe": {"steps": 4}})
    result = run("validate", path)
    assert result.exit_code == 2, result.output
    error = one_line_error(result).strip().splitlines()[-1]
    assert f"more than the {project.MAX_PYPROJECT_BYTES}-byte cap" in error
    assert "--isolated" in error
    assert run("validate", path, "--isolated").exit_code == 0
