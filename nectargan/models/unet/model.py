"""NectarGAN's UNet generator, checkpoint-compatible, with its known defects fixed.

Layout (``f = features``, input halved ``n_downs + 2`` times)::

    initial_down (in -> f) -> downs[0..n_downs-1] -> bottleneck (8f -> 8f, stride 2)
    ups[0] (bottleneck output alone) -> ups[i] (cat[x, skip]) -> final_up (cat[x, initial_down out])

Attribute names and registration order (``initial_down``, ``downs``, ``bottleneck``, ``ups``,
``final_up``) equal NectarGAN's, so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import init

from nectargan.errors import InvalidArgumentError, did_you_mean
from nectargan.models._validate import require_int
from nectargan.models.unet.blocks import UPCONV_TYPES, UnetBlock, resolve_block

ChannelPair = tuple[int, int]
ChannelMap = dict[str, Any]

MIN_N_DOWNS = 3


def min_input_size(n_downs: int) -> int:
    """Smallest square side the generator accepts: it halves the input ``n_downs + 2`` times."""
    return 2 ** (n_downs + 2)


def build_channel_map(
    in_channels: int, features: int, n_downs: int, out_channels: int | None = None
) -> ChannelMap:
    """NectarGAN's channel map: (in, out) channels of every layer, capped at ``8 * features``.

    Returns a dict with ``initial_down``, ``downs`` (list), ``bottleneck``, ``ups`` (list) and
    ``final_up``. With ``out_channels`` None the output has ``in_channels`` channels, as in NectarGAN.
    """
    cap = 8 * features
    down_channels: list[ChannelPair] = [(in_channels, features)]
    out = features
    for _ in range(n_downs):
        step_in, out = min(out, cap), min(2 * out, cap)
        down_channels.append((step_in, out))
    # Up path mirrors the down path; each later up also takes the skip, doubling its input.
    up_channels = [(2 * c_out, c_in) for c_in, c_out in reversed(down_channels)]
    up_channels.insert(0, (cap, cap))
    final_in, final_out = up_channels[-1]
    if out_channels is not None:
        final_out = out_channels
    return {
        "initial_down": down_channels[0],
        "downs": down_channels[1:],
        "bottleneck": (cap, cap),
        "ups": up_channels[:-1],
        "final_up": (final_in, final_out),
    }


def validate_generator_args(
    input_size: Any,
    in_channels: Any = 3,
    features: Any = 64,
    n_downs: Any = 6,
    use_dropout_layers: Any = 3,
    block_type: Any = UnetBlock,
    upconv_type: Any = "Transposed",
    out_channels: Any = None,
) -> type[nn.Module]:
    """Check every generator argument; return the resolved block class.

    Raises:
        InvalidArgumentError (a ValueError): naming the argument, its value and what is valid.
    """
    n_downs = require_int("n_downs", n_downs, minimum=MIN_N_DOWNS)
    require_int("features", features, minimum=1)
    require_int("in_channels", in_channels, minimum=1)
    if out_channels is not None:
        require_int("out_channels", out_channels, minimum=1)
    require_int("use_dropout_layers", use_dropout_layers, minimum=0, maximum=n_downs + 1)
    if upconv_type not in UPCONV_TYPES:
        raise InvalidArgumentError(
            f"upconv_type={upconv_type!r} is not valid: use one of "
            f"{', '.join(repr(u) for u in UPCONV_TYPES)}{did_you_mean(str(upconv_type), UPCONV_TYPES)}"
        )
    block_cls = resolve_block(block_type)
    require_int("input_size", input_size, minimum=1)
    step = min_input_size(n_downs)
    if input_size % step:
        lower = max(step, input_size // step * step)
        raise InvalidArgumentError(
            f"input_size={input_size} is not valid for n_downs={n_downs}: the input is halved "
            f"n_downs + 2 = {n_downs + 2} times, so it must be a positive multiple of {step} "
            f"(e.g. {lower} or {lower + step})"
        )
    return block_cls


class UnetGenerator(nn.Module):
    """A UNet generator with a configurable depth, width, block and upsampling type.

    Args:
        input_size: Side of the square training input; a multiple of ``2**(n_downs+2)``.
        in_channels: Channels of the input image (1 for grey, 3 for RGB).
        features: Channels of the first down layer; every layer is capped at ``8 * features``.
        n_downs: Down layers between ``initial_down`` and the bottleneck (at least 3).
        use_dropout_layers: How many up layers, deepest first, apply Dropout(0.5) (0..n_downs+1).
        block_type: A block class (``UnetBlock``, ``ResidualUnetBlock``, a user's) or its registry name.
        upconv_type: ``'Transposed'`` (transposed conv) or ``'Bilinear'`` (bilinear x2 + conv).
        out_channels: Output channels (keyword only; default ``in_channels`` as in NectarGAN).

    Raises:
        InvalidArgumentError (a ValueError) for any invalid argument.
    """

    def __init__(
        self,
        input_size: int,
        in_channels: int = 3,
        features: int = 64,
        n_downs: int = 6,
        use_dropout_layers: int = 3,
        block_type: type[nn.Module] | str = UnetBlock,
        upconv_type: str = "Transposed",
        *,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.block_type = validate_generator_args(
            input_size, in_channels, features, n_downs, use_dropout_layers,
            block_type, upconv_type, out_channels,
        )
        self.input_size = input_size
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.features = features
        self.n_downs = n_downs
        self.use_dropout_layers = use_dropout_layers
        self.upconv_type = upconv_type
        self.build_model()

    @property
    def n_down(self) -> int:
        """NectarGAN's name for ``n_downs``."""
        return self.n_downs

    def build_model(self) -> None:
        """Build the channel map, the layers in NectarGAN's registration order, and init weights."""
        self.build_channel_map()
        self.define_downsampling_blocks()
        self.define_bottleneck()
        self.define_upsampling_blocks()
        self.apply(self.init_weights)

    def build_channel_map(self) -> None:
        """Set ``self.channel_map`` (see :func:`build_channel_map`)."""
        self.channel_map = build_channel_map(
            self.in_channels, self.features, self.n_downs, self.out_channels
        )

    def _block(self, channels: ChannelPair, **kwargs: Any) -> nn.Module:
        return self.block_type(channels[0], channels[1], upconv_type=self.upconv_type, **kwargs)

    def define_downsampling_blocks(self) -> None:
        self.initial_down = self._block(
            self.channel_map["initial_down"], activation="leaky", norm=None, down=True, bias=True
        )
        self.downs = nn.ModuleList(
            self._block(pair, activation="leaky", norm="instance", down=True, bias=False)
            for pair in self.channel_map["downs"]
        )

    def define_bottleneck(self) -> None:
        self.bottleneck = self._block(
            self.channel_map["bottleneck"], activation="relu", norm=None, down=True, bias=True
        )

    def define_upsampling_blocks(self) -> None:
        self.ups = nn.ModuleList(
            self._block(
                pair, activation="relu", norm="instance", down=False, bias=False,
                use_dropout=i < self.use_dropout_layers,
            )
            for i, pair in enumerate(self.channel_map["ups"])
        )
        self.final_up = self._block(
            self.channel_map["final_up"], activation="tanh", norm=None, down=False, bias=True
        )

    @staticmethod
    def init_weights(m: nn.Module) -> None:
        """Conv weights ~ N(0, 0.02) and biases 0; affine norm weights ~ N(1, 0.02), as NectarGAN."""
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                init.constant_(m.bias, 0.0)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)):
            if m.weight is not None:
                init.normal_(m.weight, 1.0, 0.02)
            if m.bias is not None:
                init.constant_(m.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial_down(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.reverse()
        x = self.ups[0](self.bottleneck(x))
        for up, skip in zip(self.ups[1:], skips, strict=False):
            x = up(torch.cat([x, skip], dim=1))
        return self.final_up(torch.cat([x, skips[-1]], dim=1))

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, features={self.features}, n_downs={self.n_downs}, "
            f"use_dropout_layers={self.use_dropout_layers}, "
            f"block_type={self.block_type.__name__}, upconv_type={self.upconv_type!r}"
        )
