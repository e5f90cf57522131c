"""A registry of named entries, each a ``"module:attr"`` reference imported on first use.

Executors and optimizers are registered this way: listing the names (the CLI's choices,
config validation) imports nothing heavy, and asking for an unknown name gets one error that
lists the known ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from stabcheck.lazy import load


class UnknownName(ValueError, KeyError):
    """A name no entry of the registry has (a ``ValueError`` and, for lookups, a
    ``KeyError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, str]):
    """``name → "module:attr"``, read like a dict; :meth:`load` imports an entry."""

    def __init__(self, what: str, entries: Mapping[str, str]) -> None:
        self.what = what  # "executor", "optimizer": the word in the error
        self._entries = dict(entries)

    def __getitem__(self, name: str) -> str:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, name: str, choices: tuple[str, ...] | None = None) -> Any:
        """The object registered as ``name`` (its module imported now); :class:`UnknownName`
        naming ``choices`` (default: the registered names) for any other name."""
        if name not in self._entries:
            known = ", ".join(choices if choices is not None else self._entries)
            raise UnknownName(f"unknown {self.what} {name!r}; expected one of {known}")
        return load(self._entries[name])
