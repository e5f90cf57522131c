"""What user code must not be able to do to the audit's own process.

* :func:`user_output_to_stderr` — user code's ``print()`` (and anything a C extension writes
  to file descriptor 1) goes to stderr while the audit runs, so that a machine format on
  stdout (``--format json``) stays parseable. Worker processes started meanwhile inherit the
  redirected descriptor, so the same holds for them.
* :func:`os_exit_raises` — user code's ``os._exit(n)`` in this process (a factory, the init
  checks, every probe under ``--executor local``) raises ``SystemExit(n)`` instead of ending
  the process with no report (``os._exit(0)`` would read as a pass); a forked child's
  ``os._exit`` still exits. Both are applied by :func:`user_output_to_stderr`.
* :func:`exit_process` — the process ends with the verdict's exit status even when user code
  left a non-daemon thread running (the interpreter would otherwise wait for it forever), and
  without the interpreter's teardown (atexit callbacks run, open files are flushed).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

from stabcheck.errors import UserCodeError


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
        with os_exit_raises():
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stdout = previous
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


@contextlib.contextmanager
def os_exit_raises() -> Iterator[None]:
    """``os._exit(n)`` raises ``SystemExit(n)`` in this process for the block (the audit
    turns that into exit 3 with a partial report); in a forked child it still exits."""
    real, owner = os._exit, os.getpid()

    def _exit(status: int) -> NoReturn:
        if os.getpid() != owner:
            real(status)
        raise SystemExit(status)

    os._exit = _exit
    try:
        yield
    finally:
        os._exit = real


def lingering_threads() -> list[threading.Thread]:
    """Non-daemon threads other than the main one that are still running."""
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]


def exit_process(code: int) -> NoReturn:
    """End the process with ``code``, without the interpreter's teardown.

    When user code left a non-daemon thread running (which the interpreter would wait for
    forever) that is all: flush and ``os._exit(code)``. Otherwise what anyone can observe of
    a normal exit still happens first: the ``atexit`` callbacks run (logging's,
    multiprocessing's, the finalizers of ``weakref.finalize`` and ``tempfile``, the user's
    own), and every open buffered file is flushed (``os._exit`` closes the descriptors).
    What is skipped is clearing every module and running torch's C++ destructors, which
    unregister each of its operators: 0.7-1.4 s after a quickstart audit on a 2-core machine,
    a tenth of its wall time (docs/performance.md, "Plain loop vs audit"). ``__del__`` of
    objects still alive at exit does not run, which Python does not promise either.
    """
    if not lingering_threads():
        atexit._run_exitfuncs()
        _flush_open_files()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


_BUFFERED = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def _flush_open_files() -> None:
    # gc.get_objects() leaves out what the CLI froze after its own imports (torch, rich,
    # pydantic: none writes a file there); user code came later.
    for obj in gc.get_objects():
        if isinstance(obj, _BUFFERED):
            with contextlib.suppress(Exception):
                if not obj.closed:
                    obj.flush()


class _Expired(BaseException):
    """Raised by the alarm inside user code; a BaseException so user code's ``except
    Exception`` (and the engines') cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Stop ``what`` (user code run in this process outside a probe: the trial forward pass,
    the per-seed init checks) past ``seconds`` (``probe.timeout_s``) with a one-line error.

    A ``SIGALRM`` timer: it interrupts Python code (a ``time.sleep``, a loop) but not a call
    hung inside a C extension; main thread of a POSIX process only, else no limit.
    """
    if seconds is None or not hasattr(signal, "setitimer") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise UserCodeError(f"{what} ran past probe.timeout_s={seconds:g}s (user code hung?); "
                            "the audit was not carried out") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def killed_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux's
    ``PR_SET_PDEATHSIG``; elsewhere, or if the call fails, nothing happens)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)


# glibc's mallopt parameters (malloc.h) and the values the audit's processes use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_TRIM_THRESHOLD = 1 << 30
MALLOC_ENV = "STABCHECK_MALLOC_TUNING"  # "0" leaves the C allocator as it is


def keep_freed_memory() -> bool:
    """Let glibc's allocator keep the memory a training step frees for the next step.

    By default glibc serves every block above an adaptive threshold (128 KiB at start) with
    its own ``mmap`` and unmaps it when freed, and gives the top of the heap back to the
    kernel once 128 KiB of it is free. A training step frees and re-allocates the same
    activation and gradient buffers (a few MB each) every step, so each step page-faults them
    in again: about 30% of a stacked LSTM step, and an audit of the corpus GPT-2 grid ran
    1.2-1.3x faster without it (docs/performance.md, "Plain loop vs audit"). Here blocks up to
    32 MiB come from the heap and up to 1 GiB of free heap is kept: the process holds at most
    that much more memory than it uses. Only stabcheck's own processes do this (the CLI's
    audit, the fork server and the workers), never a library caller's process;
    ``STABCHECK_MALLOC_TUNING=0`` turns it off.
    Returns whether the allocator took the settings (Linux with glibc only).
    """
    if os.environ.get(MALLOC_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))

