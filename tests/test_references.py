"""Resolving "module:attr" and "./file.py:attr" references, and binding their kwargs."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from stabcheck.references import ReferenceProblem, check_kwargs, resolve, resolve_callable


def test_importable_module_reference(tmp_path: Path) -> None:
    fn = resolve("math:sqrt", tmp_path)
    assert fn(9.0) == 3.0


def test_dotted_attribute(tmp_path: Path) -> None:
    assert resolve("collections:OrderedDict.fromkeys", tmp_path) == collections.OrderedDict.fromkeys


def test_file_reference_is_relative_to_base_dir(tmp_path: Path) -> None:
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "helper.py").write_text("VALUE = 41\n")
    (sub / "models.py").write_text("from helper import VALUE\n\ndef build(k=1):\n"
                                   "    return VALUE + k\n")
    fn = resolve_callable("./models.py:build", sub)
    assert fn() == 42  # the file's directory was importable while it loaded


def test_file_is_loaded_once(tmp_path: Path) -> None:
    (tmp_path / "counter.py").write_text("import builtins\n"
                                         "builtins._sc_loads = getattr(builtins, '_sc_loads', 0)"
                                         " + 1\n\ndef a():\n    pass\n\ndef b():\n    pass\n")
    import builtins

    resolve("./counter.py:a", tmp_path)
    resolve("./counter.py:b", tmp_path)
    assert builtins._sc_loads == 1


@pytest.mark.parametrize("ref,message", [
    ("no_such_module_xyz:build", "module 'no_such_module_xyz' not found"),
    ("./missing.py:build", "file './missing.py' not found"),
    ("math:sqrtt", "'math' has no attribute 'sqrtt' (did you mean 'sqrt'?)"),
    ("math", "is not a reference"),
])
def test_bad_references(tmp_path: Path, ref: str, message: str) -> None:
    with pytest.raises(ReferenceProblem) as info:
        resolve(ref, tmp_path)
    assert message in str(info.value)


def test_import_error_inside_user_file(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import definitely_not_installed_pkg\n")
    with pytest.raises(ReferenceProblem, match="ModuleNotFoundError"):
        resolve("./broken.py:x", tmp_path)


def test_not_callable(tmp_path: Path) -> None:
    with pytest.raises(ReferenceProblem, match="not something callable"):
        resolve_callable("math:pi", tmp_path)


def test_kwargs_bind() -> None:
    def build(width: int, depth: int = 2) -> None: ...

    check_kwargs(build, {"width": 3}, "model 'x'")
    with pytest.raises(ReferenceProblem, match=r"does not take 'widht' \(did you mean 'width'\?\)"):
        check_kwargs(build, {"widht": 3}, "model 'x'")
    with pytest.raises(ReferenceProblem, match="missing a required argument: 'width'"):
        check_kwargs(build, {}, "model 'x'")


def test_kwargs_accepted_by_var_keyword() -> None:
    def build(**anything: int) -> None: ...

    check_kwargs(build, {"whatever": 1}, "model")
