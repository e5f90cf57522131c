"""Your data, referenced from stabcheck.yaml as "./data.py:load". Replace the body.

Return (inputs, targets) tensors or NumPy arrays, a dict of them (the model then gets the
non-target keys as keyword arguments), or a map-style torch Dataset. stabcheck reads it into
memory once (up to data.max_samples) and draws every probe's batches from it.
"""

from __future__ import annotations

import numpy as np


def load(n_samples: int = 1024, n_features: int = 16, n_classes: int = 4,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per class: replace with loading your own data."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 2.0, (n_classes, n_features)).astype(np.float32)
    labels = rng.integers(0, n_classes, n_samples)
    inputs = centers[labels] + rng.normal(0.0, 1.0, (n_samples, n_features)).astype(np.float32)
    return inputs, labels
