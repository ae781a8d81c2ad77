"""The PatchGAN discriminator's hidden block."""

from __future__ import annotations

import torch
from torch import nn


class CNNBlock(nn.Module):
    """4x4 conv (reflect padding, no bias) -> InstanceNorm2d -> LeakyReLU(0.2), in ``conv``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(
                in_channels, out_channels, kernel_size=4, stride=stride, padding=1,
                bias=False, padding_mode="reflect",
            ),
            nn.InstanceNorm2d(out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
