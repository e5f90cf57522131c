"""What the workers' fork server imports once (:func:`stabcheck.executors.worker.worker_context`).

Importing torch is most of a spawned worker's start-up; a worker forked from a server that has
already imported it, and stabcheck's engine modules, starts with them loaded. The stand-in for
``torch._dynamo`` goes in first (:mod:`stabcheck.nodynamo`), as in the audit's own process.
Nothing here runs a torch operation, so the server never starts an OpenMP (intra-op) thread
pool, and a fork from it is as safe as a fresh process; nor does it touch CUDA, so a worker
forked from it may initialise CUDA itself.

First of all the server asks the kernel to kill it when the audit dies (Linux): an audit that
ends (or is killed) while the server is still importing torch leaves nothing behind. The
server is always started from the audit's main thread (``ProcessExecutor.prepare``), since the
kernel ties this to the thread that started it.
"""

from __future__ import annotations

from stabcheck.executors.hygiene import keep_freed_memory, killed_with_parent

killed_with_parent()  # before the slow imports below (hygiene imports nothing heavy)
keep_freed_memory()  # inherited by every worker forked from this server

from stabcheck import nodynamo  # noqa: E402

nodynamo.install()

import torch  # noqa: E402,F401

import stabcheck.engine.sequential  # noqa: E402
import stabcheck.engine.vectorized  # noqa: E402
import stabcheck.executors.worker  # noqa: E402
import stabcheck.problem  # noqa: E402,F401
