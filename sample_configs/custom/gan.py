"""A tiny GAN on synthetic 2-D data, for ``custom_step_gan.yaml``.

The discriminator uses BatchNorm on purpose: the audit's normalisation lint (SC901) flags it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class GAN(nn.Module):
    """``generator`` maps noise to 2-D points; ``discriminator`` scores points."""

    def __init__(self, noise_dim: int = 8, width: int = 64) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.generator = nn.Sequential(nn.Linear(noise_dim, width), nn.ReLU(),
                                       nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, width), nn.BatchNorm1d(width),
                                           nn.LeakyReLU(0.2), nn.Linear(width, 1))


def build(noise_dim: int = 8, width: int = 64) -> GAN:
    return GAN(noise_dim, width)


def ring(n_samples: int = 1024, modes: int = 8, radius: float = 2.0, noise: float = 0.05,
         seed: int = 0) -> tuple[torch.Tensor]:
    """Points on a ring of ``modes`` Gaussian blobs (the classic 2-D GAN benchmark)."""
    gen = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.randint(0, modes, (n_samples,), generator=gen) / modes
    centres = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (centres + noise * torch.randn(n_samples, 2, generator=gen),)


def train_step(model: GAN, batch: tuple[torch.Tensor, ...], optimizers: dict, ctx) -> dict:
    """One discriminator update, then one generator update (non-saturating GAN loss)."""
    (real,) = batch
    z = torch.randn(real.shape[0], model.noise_dim, device=real.device)
    fake = model.generator(z)

    d_opt, g_opt = optimizers["discriminator"], optimizers["generator"]
    d_opt.zero_grad(set_to_none=True)
    d_real, d_fake = model.discriminator(real), model.discriminator(fake.detach())
    d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    d_loss.backward()
    d_opt.step()

    g_opt.zero_grad(set_to_none=True)
    g_loss = F.softplus(-model.discriminator(fake)).mean()
    g_loss.backward()
    g_opt.step()
    return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}
