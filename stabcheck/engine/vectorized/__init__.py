"""The vectorized engine: every probe of a cohort trained at once, as one ``vmap``-ed step.

Probes that share a batch size share every tensor shape, so their models can be stacked:

* each member's model is built exactly as the sequential engine builds it (same seed, same
  initialisation), then its trainable parameters are laid out side by side in **one flat
  ``[P, N]`` tensor** (parameters grouped by layer, so every layer is one contiguous slice);
* the forward pass runs under :func:`torch.func.vmap` (``randomness="different"``) over
  one base module whose parameters are swapped for views of that flat tensor;
* the gradient comes back as one ``[P, N]`` tensor (backward of the summed per-member
  losses by default, or ``vmap(grad)``); norms, clipping and the optimizer update are then a
  handful of whole-cohort tensor operations instead of one per parameter per probe;
* per-member learning rates (warmup included) are ``[steps, P]`` tensors; the optimizer's
  stacked update comes from the optimizer registry (:mod:`stabcheck.optimizers`: SGD with
  momentum, dampening, Nesterov and weight decay, Adam, AdamW, RMSprop), following
  ``torch.optim``'s arithmetic;
* recurrent layers (``nn.LSTM``, ``GRU``, ``RNN`` and their cells) run in the stacked module
  as a recurrence of matmuls and gates that ``vmap`` batches (:mod:`.rnn`);
* batches are index gathers on the device from a ``[P, steps, B]`` order, the same order
  the sequential engine draws for each seed;
* statistics go into one preallocated ``[P, steps, C]`` device buffer, copied to the host
  every ``flush_every`` steps: no host sync in between. Norms are accumulated in float32
  (3-4x cheaper than float64, equal to ~1e-7);
* at a flush, a member with a non-finite statistic is dropped from the stack and replayed by
  the sequential engine from the last flush (:mod:`.replay`).

The records it produces have exactly the sequential engine's layout (``engine=
"vectorized"``); ``tests/engine/test_vectorized.py`` checks that the traces agree.

Buffers (BatchNorm running statistics) are stacked like parameters and updated in place
under ``vmap``, each member's own row. What it cannot run falls back to the sequential engine
with a one-line reason (:func:`select_engine`, :mod:`.eligibility`): optimizers without a
stacked update, cumulative BatchNorm (``momentum=None``), parameters without gradients, an
LSTM with a projection or over long sequences for a small cohort (:mod:`.rnn`),
anything ``vmap`` refuses, and models whose trial step under ``vmap`` disagrees with the
sequential engine's for any of the (up to three) trial members.

Modules, leaves first: :mod:`.layout`, :mod:`.scaler` and :mod:`.rnn`, :mod:`.stacked` (the
stacked state and step), :mod:`.memory`, :mod:`.eligibility`, :mod:`.replay`, :mod:`.engine`,
:mod:`.select`.

Measured by ``benchmarks/bench_engines.py``: backpropagating the summed per-member losses
was as fast as or faster than ``vmap(grad)`` on every grid tried, so it is the default.
"""

from __future__ import annotations

from stabcheck.engine.vectorized.eligibility import (
    model_reason,
    optimizer_reason,
    vectorized_choice,
    vectorized_reason,
)
from stabcheck.engine.vectorized.engine import VectorizedEngine
from stabcheck.engine.vectorized.memory import max_members
from stabcheck.engine.vectorized.select import select_engine
from stabcheck.engine.vectorized.stacked import GRAD_MODES, CohortRun, Ineligible

__all__ = ["GRAD_MODES", "CohortRun", "Ineligible", "VectorizedEngine", "max_members",
           "model_reason", "optimizer_reason", "select_engine", "vectorized_choice",
           "vectorized_reason"]
