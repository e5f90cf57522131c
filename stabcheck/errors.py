"""Exceptions that carry the exit code the CLI must return.

The CLI turns each of these into one line on stderr and its exit code; anything else that
escapes is an internal error (exit 3). See the exit-code table in docs/cli.md.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_CARRIED_OUT = 3
EXIT_INTERRUPTED = 130


class StabcheckError(Exception):
    """Base class: an error with a one-line message meant for the user."""

    exit_code = EXIT_NOT_CARRIED_OUT


class ConfigError(StabcheckError):
    """The config (or a CLI argument) is invalid: bad YAML, unknown key, wrong type.

    ``messages`` holds every problem found, each already formatted as
    ``FILE:LINE:COL: key.path: message``.
    """

    exit_code = EXIT_USAGE

    def __init__(self, messages: list[str] | str) -> None:
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))


class ReferenceError_(ConfigError):
    """A ``module:attr`` or ``./file.py:attr`` reference that does not import or bind."""


class UserCodeError(StabcheckError):
    """User code raised while building the model, the data or the loss (exit 3)."""

    exit_code = EXIT_NOT_CARRIED_OUT


class AuditNotCarriedOut(StabcheckError):
    """The audit ran but could not reach a verdict (too few probes finished, …)."""

    exit_code = EXIT_NOT_CARRIED_OUT


def os_reason(exc: OSError) -> str:
    """Why an ``OSError`` happened, in words (``disk full`` for ENOSPC and EDQUOT)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into the one-line ``cannot write`` error."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {os_reason(exc)}") from None


@contextlib.contextmanager
def user_code_exits(what: str) -> Iterator[None]:
    """Turn ``sys.exit()`` (any ``SystemExit``) from user code into a :class:`UserCodeError`.

    A CI gate reads exit 0 as "passed": user code that calls ``sys.exit(0)`` while stabcheck
    builds the model or the data must never end the process with that status.
    """
    try:
        yield
    except SystemExit as exc:
        raise UserCodeError(f"{what}: user code called sys.exit({exc.code!r}); the audit was "
                            "not carried out") from None
