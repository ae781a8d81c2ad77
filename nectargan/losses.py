"""The pix2pix objective as NectarGAN trains it (BCE-with-logits GAN loss + lambda_l1 x L1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5 x (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)); the 0.5 slows D relative to G, as in pix2pix."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_losses(
    fake_logits: torch.Tensor, fake: torch.Tensor, target: torch.Tensor, lambda_gan: float, lambda_l1: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, GAN term, L1 term): total = lambda_gan x BCE(D(x, G(x)), 1) + lambda_l1 x L1(G(x), y)."""
    gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    l1 = F.l1_loss(fake.float(), target.float())
    return lambda_gan * gan + lambda_l1 * l1, gan, l1
