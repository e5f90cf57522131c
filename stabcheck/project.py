"""``[tool.stabcheck]`` in the nearest ``pyproject.toml``: project-wide defaults.

A project sets its CI policy once — ``fail_on`` and detector ``thresholds`` — instead of in
every config. Precedence, lowest first: ``[tool.stabcheck]``, the config file, command-line
flags. ``--isolated`` ignores ``pyproject.toml`` altogether. The nearest file is the first
``pyproject.toml`` with a ``[tool.stabcheck]`` table in the config file's directory or one of
its parents (as ruff finds ``[tool.ruff]``).
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stabcheck.errors import ConfigError
from stabcheck.thresholds import Thresholds

ALLOWED = ("fail_on", "thresholds")
# Every pyproject.toml at or above the config is read; one bigger than this is refused
# before it is parsed (a 100 MB file took seconds and hundreds of MB to parse).
MAX_PYPROJECT_BYTES = 10 * 1024 * 1024
FAIL_ON = ("error", "warning", "never")


def find_pyproject(start: Path) -> tuple[Path, dict[str, Any]] | None:
    """The nearest ``pyproject.toml`` at or above ``start`` with ``[tool.stabcheck]``."""
    directory = start.resolve()
    if directory.is_file():
        directory = directory.parent
    for folder in (directory, *directory.parents):
        candidate = folder / "pyproject.toml"
        if not candidate.is_file():
            continue
        try:
            if (size := candidate.stat().st_size) > MAX_PYPROJECT_BYTES:
                raise ConfigError(f"{candidate}: file is {size} bytes, more than the "
                                  f"{MAX_PYPROJECT_BYTES}-byte cap for a pyproject.toml "
                                  "(--isolated ignores it)")
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{candidate}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{candidate}: cannot read: {exc.strerror or exc}") from None
        section = data.get("tool", {}).get("stabcheck")
        if section is not None:
            return candidate, section
    return None


def project_defaults(config_path: Path, isolated: bool = False
                     ) -> tuple[dict[str, Any], Path | None]:
    """The validated ``[tool.stabcheck]`` defaults for ``config_path`` and their file."""
    if isolated:
        return {}, None
    found = find_pyproject(config_path)
    if found is None:
        return {}, None
    path, section = found
    where = f"{path}: tool.stabcheck"
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a table")
    errors: list[str] = []
    for key in section:
        if key not in ALLOWED:
            close = difflib.get_close_matches(key, ALLOWED, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else \
                f" (allowed: {', '.join(ALLOWED)})"
            errors.append(f"{where}.{key}: unknown key {key!r}{hint}")
    if "fail_on" in section and section["fail_on"] not in FAIL_ON:
        errors.append(f"{where}.fail_on: expected one of {', '.join(FAIL_ON)}, got "
                      f"{section['fail_on']!r}")
    if "thresholds" in section:
        try:
            Thresholds.model_validate(section["thresholds"])
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                loc = ".".join(str(p) for p in err["loc"])
                errors.append(f"{where}.thresholds.{loc}: {err['msg']}")
    if errors:
        raise ConfigError(errors)
    return {k: v for k, v in section.items() if k in ALLOWED}, path
