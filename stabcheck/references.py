"""Resolve user-code references named in a config.

Two forms, as in torchtune and most plugin systems:

* ``"package.module:attr"`` is imported from ``sys.path``;
* ``"./file.py:attr"`` (any reference whose module part ends in ``.py``) is loaded from a path
  relative to the config file's directory. The file's own directory is put on ``sys.path``
  while it loads, so it can import its siblings.

``attr`` may be dotted (``"mod:Class.build"``). Keyword arguments are checked against the
target's signature with :func:`inspect.signature` ``.bind`` before anything runs.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

_FILE_MODULES: dict[Path, ModuleType] = {}


class ReferenceProblem(Exception):
    """A reference that does not import, does not exist or does not bind its kwargs."""


def split(ref: str) -> tuple[str, str]:
    """``"a.b:c"`` → ``("a.b", "c")``."""
    module, sep, attr = ref.rpartition(":")
    if not sep or not module or not attr:
        raise ReferenceProblem(f"{ref!r} is not a reference: use 'package.module:attr' or "
                               "'./file.py:attr'")
    return module, attr


def is_file_reference(module: str) -> bool:
    """Whether the module part names a Python file rather than an importable module."""
    return module.endswith(".py") or module.startswith((".", "/", "~"))


def _load_file(module: str, base_dir: Path) -> ModuleType:
    path = (base_dir / Path(module).expanduser()).resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        raise ReferenceProblem(f"file {module!r} not found (looked for {path})")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"stabcheck_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReferenceProblem(f"cannot load {module!r} as a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(mod)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise ReferenceProblem(f"importing {module!r} raised {_describe(exc)}") from exc
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(path.parent))
    _FILE_MODULES[path] = mod
    return mod


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ReferenceProblem(f"module {module!r} not found (is it installed, or did you "
                                   "mean a './file.py' path?)") from exc
        raise ReferenceProblem(f"importing {module!r} raised {_describe(exc)}") from exc
    except Exception as exc:
        raise ReferenceProblem(f"importing {module!r} raised {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def resolve(ref: str, base_dir: Path) -> Any:
    """Import the object ``ref`` names; raise :class:`ReferenceProblem` on any failure."""
    module_name, attr = split(ref)
    module = _load_file(module_name, base_dir) if is_file_reference(module_name) \
        else _import(module_name)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ReferenceProblem(f"{module_name!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    return obj


def resolve_callable(ref: str, base_dir: Path) -> Callable[..., Any]:
    """Like :func:`resolve`, and the result must be callable."""
    obj = resolve(ref, base_dir)
    if not callable(obj):
        raise ReferenceProblem(f"{ref!r} is a {type(obj).__name__}, not something callable")
    return obj


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
    """Bind ``kwargs`` to ``fn``'s signature without calling it.

    Raises :class:`ReferenceProblem` naming the bad or missing argument, with a suggestion
    for a likely typo.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a C function without a signature: let the call itself report
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        message = str(exc)
        params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
        for key in kwargs:
            if key not in sig.parameters and not any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
                close = difflib.get_close_matches(key, params, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else \
                    f" (it takes: {', '.join(params) or 'nothing'})"
                raise ReferenceProblem(f"{label} does not take {key!r}{hint}") from None
        raise ReferenceProblem(f"{label}: {message}") from None


def resolve_paths(kwargs: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """Factory kwargs with relative paths made relative to the config file.

    The rule: a string value (at the top level, or in a top-level list) that is a relative
    path naming a file or directory that exists under ``base_dir`` (the config file's
    directory) is replaced by that absolute path. Every other value is passed unchanged, so
    ``"relu"`` stays ``"relu"`` and a path to a file that does not exist yet (an output) is
    left for the factory to interpret.
    """
    def fix(value: Any) -> Any:
        if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
            return value
        path = Path(value).expanduser()
        if path.is_absolute():
            return value
        candidate = base_dir / path
        try:
            return str(candidate.resolve()) if candidate.exists() else value
        except (OSError, ValueError):
            return value

    return {k: [fix(v) for v in value] if isinstance(value, list) else fix(value)
            for k, value in kwargs.items()}
