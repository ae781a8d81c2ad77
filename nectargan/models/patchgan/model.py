"""NectarGAN's PatchGAN discriminator: a conditional D that scores overlapping patches.

``forward(x, y)`` concatenates the input image and a real or generated target on channels and
returns one logit per patch (no sigmoid; pair it with BCE-with-logits). The layers live in the
Sequential ``model`` so state_dict keys equal NectarGAN's. Like NectarGAN, the weights keep
PyTorch's default initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from nectargan.errors import InvalidArgumentError
from nectargan.models._validate import require_int
from nectargan.models.patchgan.blocks import CNNBlock

_KERNEL = 4


class Discriminator(nn.Module):
    """PatchGAN discriminator.

    Args:
        in_channels: Channels of each of the two images (the first conv sees twice this).
        base_channels: Channels of the first conv; doubled per hidden layer up to ``max_channels``.
        n_layers: 1 + the number of hidden blocks; 3 gives 34x34 patches, 4 the classic 70x70.
        max_channels: Cap on the channels of any layer.
        target_channels: Channels of ``y`` when they differ from ``x``'s (keyword only; default
            ``in_channels``, as in NectarGAN), e.g. 1 -> 3 for colourisation.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        n_layers: int = 3,
        max_channels: int = 512,
        *,
        target_channels: int | None = None,
    ) -> None:
        super().__init__()
        require_int("in_channels", in_channels, minimum=1)
        if target_channels is not None:
            require_int("target_channels", target_channels, minimum=1)
        require_int("base_channels", base_channels, minimum=1)
        require_int("n_layers", n_layers, minimum=1)
        require_int("max_channels", max_channels, minimum=base_channels)
        self.in_channels = in_channels
        self.target_channels = in_channels if target_channels is None else target_channels
        self.n_layers = n_layers
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels + self.target_channels, base_channels, kernel_size=_KERNEL, stride=2, padding=1,
                padding_mode="reflect",
            ),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = base_channels
        for stride in self.hidden_strides(n_layers):
            out = min(2 * channels, max_channels)
            layers.append(CNNBlock(channels, out, stride=stride))
            channels = out
        layers.append(
            nn.Conv2d(channels, 1, kernel_size=_KERNEL, stride=1, padding=1, padding_mode="reflect")
        )
        self.model = nn.Sequential(*layers)

    @staticmethod
    def hidden_strides(n_layers: int) -> list[int]:
        """Strides of the hidden blocks: 2, except 1 for the last."""
        return [1 if i == n_layers - 1 else 2 for i in range(1, n_layers)]

    def _strides(self) -> list[int]:
        return [2, *self.hidden_strides(self.n_layers), 1]

    def output_size(self, input_size: int) -> int:
        """Side of the logit map for a square input of side ``input_size``.

        Raises:
            InvalidArgumentError: when the input is too small to leave at least one patch.
        """
        size = require_int("input_size", input_size, minimum=1)
        for stride in self._strides():
            size = (size + 2 - _KERNEL) // stride + 1
            if size < 1:
                raise InvalidArgumentError(
                    f"input_size={input_size} is too small for a Discriminator with "
                    f"n_layers={self.n_layers}: no patch would remain"
                )
        return size

    def receptive_field(self) -> int:
        """Side, in input pixels, of the patch each output logit sees."""
        field, jump = 1, 1
        for stride in self._strides():
            field += (_KERNEL - 1) * jump
            jump *= stride
        return field

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, y], dim=1))
