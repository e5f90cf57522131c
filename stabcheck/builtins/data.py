"""Built-in synthetic datasets, generated in code from their own seed (no downloads).

Each returns ``(inputs, targets)`` tensors. The dataset seed is separate from the probe seed:
every probe of an audit sees the same data, in its own seeded order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib import resources

import torch

TEXT_VOCAB_SIZE = 128


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def blobs(n_samples: int = 2048, n_features: int = 20, n_classes: int = 4,
          cluster_std: float = 1.0, center_scale: float = 2.0,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters for classification: class ``c`` is ``N(center_c, cluster_std²·I)``."""
    _positive(n_samples=n_samples, n_features=n_features, n_classes=n_classes)
    g = _generator(seed)
    centers = torch.randn(n_classes, n_features, generator=g) * center_scale
    labels = torch.arange(n_samples) % n_classes
    labels = labels[torch.randperm(n_samples, generator=g)]
    inputs = centers[labels] + cluster_std * torch.randn(n_samples, n_features, generator=g)
    return inputs, labels


def regression(n_samples: int = 1024, n_features: int = 16, condition_number: float = 10.0,
               noise: float = 0.0, n_targets: int = 1,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear targets ``y = X w* + noise`` with a chosen condition number of ``cov(X)``.

    The population covariance has eigenvalues spaced evenly in log space from 1 down to
    ``1/condition_number``, in a random orthonormal basis. With MSE and a bias-free linear
    model the Hessian is exactly ``(2 / n_targets) · XᵀX / n_samples``, which the curvature
    tests use as ground truth.
    """
    _positive(n_samples=n_samples, n_features=n_features, n_targets=n_targets)
    if condition_number < 1:
        raise ValueError("condition_number must be >= 1")
    g = _generator(seed)
    eig = torch.logspace(0.0, -math.log10(condition_number), n_features)
    basis, _ = torch.linalg.qr(torch.randn(n_features, n_features, generator=g))
    z = torch.randn(n_samples, n_features, generator=g)
    inputs = (z * eig.sqrt()) @ basis.T
    w_star = torch.randn(n_features, n_targets, generator=g)
    targets = inputs @ w_star + noise * torch.randn(n_samples, n_targets, generator=g)
    return inputs, targets


def text(seq_len: int = 64, stride: int = 1, max_samples: int | None = None,
         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Character-level next-token windows over a bundled public-domain text (ASCII, vocab 128).

    Returns ``(tokens[N, seq_len], next_tokens[N, seq_len])``.
    """
    _positive(seq_len=seq_len, stride=stride)
    raw = resources.files("stabcheck.builtins").joinpath("sonnets.txt").read_text("utf-8")
    codes = torch.tensor([min(ord(c), TEXT_VOCAB_SIZE - 1) for c in raw], dtype=torch.long)
    if codes.numel() <= seq_len + 1:
        raise ValueError(f"seq_len={seq_len} is longer than the bundled text")
    starts = torch.arange(0, codes.numel() - seq_len - 1, stride)
    if max_samples is not None and starts.numel() > max_samples:
        keep = torch.randperm(starts.numel(), generator=_generator(seed))[:max_samples]
        starts = starts[keep.sort().values]
    window = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    tokens = codes[window]
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def images(n_samples: int = 2048, image_size: int = 16, channels: int = 1, n_classes: int = 4,
           noise: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Small images: one smooth random template per class plus pixel noise (for ``cnn``)."""
    _positive(n_samples=n_samples, image_size=image_size, channels=channels, n_classes=n_classes)
    g = _generator(seed)
    coarse = torch.randn(n_classes, channels, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(image_size, image_size),
                                                mode="bilinear", align_corners=False)
    labels = torch.arange(n_samples) % n_classes
    labels = labels[torch.randperm(n_samples, generator=g)]
    inputs = templates[labels] + noise * torch.randn(
        n_samples, channels, image_size, image_size, generator=g)
    return inputs, labels


def _positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


DATASETS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "blobs": blobs, "regression": regression, "text": text, "images": images}
