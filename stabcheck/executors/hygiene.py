"""What user code must not be able to do to the audit's own process.

* :func:`user_output_to_stderr` — user code's ``print()`` (and anything a C extension writes
  to file descriptor 1) goes to stderr while the audit runs, so that a machine format on
  stdout (``--format json``) stays parseable. Worker processes started meanwhile inherit the
  redirected descriptor, so the same holds for them.
* :func:`exit_process` — the process ends with the verdict's exit status even when user code
  left a non-daemon thread running (the interpreter would otherwise wait for it forever).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def user_output_to_stderr() -> Iterator[None]:
    """Send stdout to stderr, at the Python and the file-descriptor level, for the block."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptor 1 (or 2): the Python level alone
        saved = None
    previous = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stdout = previous
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def lingering_threads() -> list[threading.Thread]:
    """Non-daemon threads other than the main one that are still running."""
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def exit_process(code: int) -> None:
    """``sys.exit(code)``, or — when user code left non-daemon threads running, which the
    interpreter would wait for forever — flush and ``os._exit(code)``."""
    if not lingering_threads():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
