"""Synthetic, learnable data of the calibration corpus, generated in code.

Each factory draws from its own seeded generator, so the data are the same whatever the
global RNG state: stabcheck and the plain loop see identical tensors.
"""

from __future__ import annotations

import math

import torch

VOCAB = 16  # keep equal to models.py's (this file is also loaded by path, alone)
SEQ = 12
CLASSES = 4
IMAGE = 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def arithmetic_tokens(n: int = 512, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Next-token prediction on arithmetic progressions mod VOCAB: ``x_t = x_0 + k t``.

    Start ``x_0`` and stride ``k`` in {1, 2, 3} are random per sequence; after two tokens the
    rest is determined. ``labels = input_ids`` (the model shifts them).
    """
    g = _gen(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=g)
    stride = torch.randint(1, 4, (n, 1), generator=g)
    ids = (start + stride * torch.arange(SEQ)) % VOCAB
    return {"input_ids": ids, "labels": ids.clone()}


def copy_tokens(n: int = 512, length: int = 6, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Sequence-to-sequence copy: the decoder must reproduce the encoder's tokens (2..VOCAB)."""
    g = _gen(seed)
    ids = torch.randint(2, VOCAB, (n, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def token_classes(n: int = 512, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Binary classification of token sequences: is token 3 more frequent than token 4?"""
    g = _gen(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = ((ids == 3).sum(1) > (ids == 4).sum(1)).long()
    return {"input_ids": ids, "labels": labels}


def class_images(n: int = 512, noise: float = 1.0, seed: int = 1234
                 ) -> dict[str, torch.Tensor]:
    """Class-conditional images: a fixed random 3x8x8 template per class plus Gaussian noise."""
    g = _gen(seed)
    templates = torch.randn(CLASSES, 3, IMAGE, IMAGE, generator=g)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = templates[labels] + noise * torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    return {"pixel_values": images, "labels": labels}


def class_sequences(n: int = 512, length: int = 16, features: int = 4, noise: float = 1.0,
                    seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose class sets the frequency and phase of a sinusoid in each feature."""
    g = _gen(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    t = torch.arange(length, dtype=torch.float32)
    freq = 0.3 + 0.25 * labels.float()
    phase = torch.arange(features, dtype=torch.float32) * math.pi / features
    clean = torch.sin(freq[:, None, None] * t[None, :, None] + phase[None, None, :])
    x = clean + noise * torch.randn(n, length, features, generator=g)
    return x, labels
