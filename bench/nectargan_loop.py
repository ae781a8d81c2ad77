"""NectarGAN's own training loop, as the baseline every speed-up is measured against (mode ``nectargan``).

What NectarGAN's trainer does each step, and these loops do too: eager fp32 on NCHW tensors, plain
Adam (no fused or foreach kernels asked for), the discriminator called separately on the real and the
fake pair and left trainable during the generator's backward, and a host synchronisation
(``.item()``) on every loss every step. The hyper-parameters are NectarGAN's (TrainConfig's defaults).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nectargan.train.config import TrainConfig


def _adam(module: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))


def nectargan_gan_step(generator: nn.Module, discriminator: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       config: TrainConfig | None = None) -> Callable[[], None]:
    """One pix2pix step as NectarGAN takes it: D on real and fake, D's step, then G against the updated D."""
    config = config or TrainConfig()
    opt_g, opt_d = _adam(generator, config), _adam(discriminator, config)

    def step() -> None:
        fake = generator(x)
        d_real = discriminator(x, y)
        d_fake = discriminator(x, fake.detach())
        loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                        + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        d_fake = discriminator(x, fake)
        loss_gan = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        loss_l1 = F.l1_loss(fake, y) * config.lambda_l1
        loss_g = config.lambda_gan * loss_gan + loss_l1
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        loss_d.item(), loss_gan.item(), loss_l1.item()  # NectarGAN reads every loss, every step

    return step


def nectargan_g_step(generator: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     config: TrainConfig | None = None) -> Callable[[], None]:
    """The generator alone (task ``train``: L1 against a target), with NectarGAN's Adam and its sync."""
    config = config or TrainConfig()
    optimizer = _adam(generator, config)

    def step() -> None:
        loss = F.l1_loss(generator(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return step
