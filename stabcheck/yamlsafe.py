"""Hardened YAML loading that remembers where every key and value came from.

A config file runs user code, and a CI job may audit a pull request from a stranger, so the
loader accepts plain data only:

* safe tags only (null, bool, int, float, str, seq, map); ``!!python/...`` and every other
  tag is rejected before anything is constructed;
* a cap on file size (``MAX_BYTES``), on nesting depth (``MAX_DEPTH``) and on the number of
  nodes after alias expansion (``MAX_NODES``), which stops "billion laughs" documents;
* duplicate keys are an error, not a silent overwrite;
* the input must be UTF-8.

Every key and value gets a 1-based ``(line, column)`` in a :class:`SourceMap`, so a schema
error can be reported as ``config.yaml:LINE:COL: key.path: message``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stabcheck.errors import ConfigError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 40
MAX_NODES = 100_000

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str")}
# YAML 1.1 calls "2024-01-01" a timestamp; a config has no use for one, so keep the text.
_TEXT_TAGS = {_TAG + "timestamp"}

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    """A 1-based position in the source file."""

    line: int
    column: int


@dataclass
class SourceMap:
    """Where each key path of a loaded document sits in its file."""

    filename: str
    keys: dict[Path_, Mark] = field(default_factory=dict)
    values: dict[Path_, Mark] = field(default_factory=dict)

    def locate(self, path: Path_, prefer_key: bool = False) -> Mark:
        """Return the best mark for ``path``, walking up to the nearest known parent."""
        path = tuple(path)
        while True:
            first, second = (self.keys, self.values) if prefer_key else (self.values, self.keys)
            if path in first:
                return first[path]
            if path in second:
                return second[path]
            if not path:
                return Mark(1, 1)
            path = path[:-1]

    def format(self, path: Path_, message: str, prefer_key: bool = False) -> str:
        """Format one error as ``FILE:LINE:COL: key.path: message``."""
        mark = self.locate(path, prefer_key)
        where = f"{self.filename}:{mark.line}:{mark.column}"
        dotted = dotted_path(path)
        return f"{where}: {dotted}: {message}" if dotted else f"{where}: {message}"


def dotted_path(path: Path_) -> str:
    """``("sweep", "seeds", 2)`` → ``sweep.seeds[2]``."""
    out = ""
    for part in path:
        if isinstance(part, str) and not (part.isprintable() and part.strip() == part):
            part = repr(part)  # a key with a newline must not break the one-line message
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 demands a dot)."""


_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _TAG + "float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns a composed node graph into plain Python data, enforcing the caps."""

    def __init__(self, filename: str, loader: _Loader) -> None:
        self.source = SourceMap(filename)
        self.loader = loader
        self.nodes = 0

    def fail(self, node: yaml.Node, message: str) -> ConfigError:
        m = _mark(node)
        return ConfigError(f"{self.source.filename}:{m.line}:{m.column}: {message}")

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"document expands to more than {MAX_NODES} nodes "
                                  "(alias bomb?); refusing to load it")
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nesting deeper than {MAX_DEPTH} levels; refusing to load it")
        self.source.values.setdefault(path, _mark(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                raise self.fail(node, f"tag {node.tag!r} is not allowed on a list")
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _TAG + "map":
                raise self.fail(node, f"tag {node.tag!r} is not allowed on a mapping")
            return self._mapping(node, path, depth)
        raise self.fail(node, f"unsupported YAML node {type(node).__name__}")

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag in _TEXT_TAGS:
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, f"tag {node.tag!r} is not allowed: configs hold plain "
                                  "data only (no python objects)")
        try:
            return self.loader.construct_object(node)
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            detail = str(exc).splitlines()[0].split(";")[0]
            raise self.fail(node, f"invalid value: {detail}") from None

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        seen: dict[Any, Mark] = {}
        merged: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                merged.update(self._merge_source(value_node, path, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.fail(key_node, "mapping keys must be plain scalars")
            key = self._scalar(key_node)
            if key in seen:
                first = seen[key]
                raise self.fail(key_node, f"duplicate key {key!r} (first defined at line "
                                          f"{first.line}); remove one of them")
            seen[key] = _mark(key_node)
            sub = (*path, key if isinstance(key, str) else str(key))
            self.source.keys[sub] = _mark(key_node)
            out[key] = self.build(value_node, sub, depth + 1)
        return {**merged, **out}

    def _merge_source(self, node: yaml.Node, path: Path_, depth: int) -> dict[Any, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[Any, Any] = {}
        for src in reversed(sources):  # earlier entries win, as in YAML's merge-key spec
            value = self.build(src, path, depth + 1)
            if not isinstance(value, dict):
                raise self.fail(src, "a merge key '<<' needs a mapping or a list of mappings")
            merged.update(value)
        return merged


def _decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            f"{filename}:{line}:{col}: file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save it as UTF-8"
        ) from None


def read_config_bytes(path: Path) -> bytes:
    """Read a config file, refusing missing files, directories and oversized input."""
    name = str(path)
    if not path.exists():
        raise ConfigError(f"{name}: no such file")
    if path.is_dir():
        raise ConfigError(f"{name}: is a directory, expected a YAML config file")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{name}: file is {size} bytes, more than the {MAX_BYTES}-byte cap "
                          "for a config")
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None


def loads(text: str | bytes, filename: str = "<string>") -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain data plus the :class:`SourceMap` of its keys."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise ConfigError(f"{filename}: more than the {MAX_BYTES}-byte cap for a config")
        text = _decode(text, filename)
    try:
        loader = _Loader(text)  # checks every character up front
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"{filename}:{line}:{col}: invalid YAML: control character "
                          f"U+{char:04X} is not allowed") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            if mark is None:
                raise ConfigError(f"{filename}: invalid YAML: {problem}") from None
            raise ConfigError(
                f"{filename}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
            ) from None
        except yaml.YAMLError as exc:  # reader errors (control characters, …)
            raise ConfigError(f"{filename}: invalid YAML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{filename}: nesting too deep to parse; refusing to load it"
                              ) from None
        builder = _Builder(filename, loader)
        if node is None:
            return None, builder.source
        try:
            return builder.build(node, (), 0), builder.source
        except yaml.YAMLError as exc:  # a scalar that does not construct, e.g. a bad float
            raise ConfigError(f"{filename}: invalid YAML value: {exc}") from None
    finally:
        loader.dispose()


def load(path: Path) -> tuple[Any, SourceMap]:
    """Load a YAML file from disk with every safety cap of :func:`loads`."""
    return loads(read_config_bytes(path), str(path))
