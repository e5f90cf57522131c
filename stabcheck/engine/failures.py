"""How a probe fails: time limits, out-of-memory, user-code exceptions, and cleaning up after.

A failing probe never fails the audit: its record says what happened (``timeout``, ``oom``,
``error`` with the innermost frame of the user's code) and the next probe starts clean.
"""

from __future__ import annotations

import contextlib
import gc
import sysconfig
import traceback
from pathlib import Path
from typing import Any

import torch


class ProbeTimeout(Exception):
    """The probe ran past ``probe.timeout_s``."""


def timeout_error(message: str) -> dict[str, Any]:
    """A record's ``error`` for a probe stopped by its time limit."""
    return {"type": "Timeout", "message": message, "where": None}


# How torch words an allocation failure: CUDA and MPS say "out of memory"; the CPU allocator
# says "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code
# 12 (Cannot allocate memory)" (a plain RuntimeError).
_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """CUDA, MPS or CPU out-of-memory, whatever class torch (or Python) raised it as."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _OOM_WORDS)


def free_memory(device: torch.device) -> None:
    """Release what a finished (or failed) probe or cohort held, so the next one has room.

    On the CPU reference counting has already freed the tensors, and a full ``gc.collect``
    costs ~0.1-0.2 s in a process that imported torch (more than a whole small probe), so it
    only runs where cached device memory has to be handed back.
    """
    if device.type != "cpu":
        gc.collect()
    if device.type == "cuda":
        # After a device-side assert the context is unusable and this raises too; the probe's
        # own error is the one worth reporting (the process executor replaces the worker).
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


_NOT_USER_CODE = tuple(
    str(Path(p).resolve()) for p in (
        Path(__file__).parents[1], Path(torch.__file__).parent, sysconfig.get_paths()["stdlib"])
)


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Type, message and the innermost frame of *user* code (not torch, stabcheck or stdlib)."""
    where = None
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if str(Path(frame.filename).resolve()).startswith(_NOT_USER_CODE):
            continue
        where = f"{frame.filename}:{frame.lineno} in {frame.name}"
        break
    message = str(exc).strip().splitlines()
    if isinstance(exc, SystemExit):  # str(SystemExit(0)) is just "0"
        message = [f"user code called sys.exit({exc.code!r})"]
    return {"type": type(exc).__name__, "message": message[0] if message else "",
            "where": where}
