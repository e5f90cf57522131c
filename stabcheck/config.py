"""The audit config: schema, loading, overrides and error formatting.

``load_config(path)`` parses the YAML safely (:mod:`stabcheck.yamlsafe`), validates it with
pydantic (unknown keys forbidden) and reports *every* problem at once, each as
``config.yaml:LINE:COL: key.path: message (did you mean 'x'?)``. User code named in the config
is not imported here: that happens in :mod:`stabcheck.problem`, after the schema validated.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from stabcheck import yamlsafe
from stabcheck.errors import ConfigError
from stabcheck.schema import AuditConfig, LRRange, choice_message

__all__ = ["AuditConfig", "LRRange", "LoadedConfig", "load_config", "load_mapping",
           "validate_data"]


@dataclass
class LoadedConfig:
    """A validated config plus where it came from (for locating later errors)."""

    config: AuditConfig
    path: Path
    source: yamlsafe.SourceMap
    overridden: set[tuple[str, ...]] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        """Directory that ``./file.py`` references are relative to."""
        return self.path.resolve().parent

    def error_at(self, path: tuple[str | int, ...], message: str) -> ConfigError:
        """A ConfigError located at ``path`` (a key path of the config)."""
        return ConfigError(_format_at(self.source, self.overridden, path, message))


def _format_at(source: yamlsafe.SourceMap, overridden: set[tuple[str, ...]],
               path: tuple[str | int, ...], message: str, prefer_key: bool = False) -> str:
    for over in overridden:
        if tuple(path[: len(over)]) == over:
            dotted = yamlsafe.dotted_path(path)
            return f"<command line>: {dotted}: {message}"
    return source.format(path, message, prefer_key=prefer_key)


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model class that sits at ``path`` in the schema, if any."""
    cls: type[BaseModel] | None = AuditConfig
    for part in path:
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            return None
        cls = _first_model(cls.model_fields[part].annotation)
    return cls


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    # Drop pydantic's own loc entries (discriminator tags, validator names).
    return tuple(p for p in loc if not (isinstance(p, str) and (p.startswith(("<", "function-")))))


def _format_validation_error(exc: ValidationError, source: yamlsafe.SourceMap,
                             overridden: set[tuple[str, ...]]) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden" and loc:
            parent = _model_at(loc[:-1])
            names = list(parent.model_fields) if parent else []
            msg = f"unknown key {loc[-1]!r}"
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            msg += f" (did you mean {close[0]!r}?)" if close else (
                f" (allowed: {', '.join(names)})" if names else "")
            out.append(_format_at(source, overridden, loc, msg, prefer_key=True))
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if kind == "missing":
            msg = f"missing required key {loc[-1]!r}" if loc else "missing required key"
            out.append(_format_at(source, overridden, loc[:-1], msg, prefer_key=True))
            continue
        if kind == "literal_error":
            choices = tuple(re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", "")))
            msg = choice_message(str(err.get("input")), choices)
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = f"expected a mapping, got {_describe(err.get('input'))}"
        elif kind == "list_type":
            msg = f"expected a list, got {_describe(err.get('input'))}"
        elif kind != "value_error" and not isinstance(err.get("input"), dict | list):
            msg = f"{msg[0].lower()}{msg[1:]}, got {err['input']!r}"
        out.append(_format_at(source, overridden, loc, msg))
    return sorted(out, key=_line_order)


def _line_order(message: str) -> tuple[int, int]:
    match = re.match(r"^.*?:(\d+):(\d+): ", message)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def set_override(raw: dict[str, Any], dotted: str, value: Any) -> tuple[str, ...]:
    """Set ``raw[a][b] = value`` for ``dotted="a.b"``, creating sections as needed."""
    keys = tuple(dotted.split("."))
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value
    return keys


def validate_data(raw: Any, source: yamlsafe.SourceMap,
                  overrides: dict[str, Any] | None = None,
                  defaults: dict[str, Any] | None = None
                  ) -> tuple[AuditConfig, set[tuple[str, ...]]]:
    """Validate plain data against the schema, applying defaults and CLI overrides.

    ``defaults`` (from ``[tool.stabcheck]``) sit under the file's own values; ``overrides``
    (``"sweep.seeds": [0, 1]``) sit above them.
    """
    if raw is None:
        raise ConfigError(f"{source.filename}: config is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source.filename}:1:1: config must be a mapping of keys, "
                          f"got {_describe(raw)}")
    data = _deep_merge(defaults or {}, raw)
    overridden: set[tuple[str, ...]] = set()
    for dotted, value in (overrides or {}).items():
        overridden.add(set_override(data, dotted, value))
    try:
        return AuditConfig.model_validate(data), overridden
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, overridden)) from None


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None,
                defaults: dict[str, Any] | None = None) -> LoadedConfig:
    """Load and validate ``path``; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    raw, source = yamlsafe.load(path)
    config, overridden = validate_data(raw, source, overrides, defaults)
    return LoadedConfig(config=config, path=path, source=source, overridden=overridden)


class _NoLines(yamlsafe.SourceMap):
    """Where a config given as a Python dict has no lines: ``<dict>: key.path: message``."""

    def format(self, path: yamlsafe.Path_, message: str, prefer_key: bool = False) -> str:
        """Format one error as ``<dict>: key.path: message``."""
        dotted = yamlsafe.dotted_path(path)
        return f"{self.filename}: {dotted}: {message}" if dotted else \
            f"{self.filename}: {message}"


def load_mapping(raw: Any, overrides: dict[str, Any] | None = None,
                 base_dir: str | Path | None = None) -> LoadedConfig:
    """Validate a config given as a dict (the Python API); relative paths in it resolve
    against ``base_dir`` (default: the working directory). Errors read ``<dict>: key: …``."""
    source = _NoLines(filename="<dict>")
    config, overridden = validate_data(copy.deepcopy(raw) if isinstance(raw, dict) else raw,
                                       source, overrides)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return LoadedConfig(config=config, path=base / "<dict>", source=source,
                        overridden=overridden)
