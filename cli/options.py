"""Options shared by several commands: the variant's architecture, and the invocation itself.

Defaults come from their owners (:class:`~bench.variant.VariantSpec` for the architecture), so a
default is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import typer

from bench.variant import VariantSpec
from nectargan.errors import NectarGANError
from nectargan.models.unet.blocks import UPCONV_TYPES


@dataclass
class Invocation:
    """The command line as typed (recorded in a run's env.json)."""

    command: str | None = None


INVOCATION = Invocation()

UpconvChoice = StrEnum("UpconvChoice", {name: name for name in UPCONV_TYPES})

NDowns = Annotated[int, typer.Option(help="Down layers between initial_down and the bottleneck.")]
Features = Annotated[int, typer.Option(help="Channels of the first layer (cap 8x).")]
BlockType = Annotated[str, typer.Option(help="Block name: UnetBlock, ResidualUnetBlock or a registered one.")]
Upconv = Annotated[UpconvChoice, typer.Option(help="Upsampling.")]
InputSize = Annotated[int, typer.Option(help="Square input side in pixels.")]
InChannels = Annotated[int, typer.Option(help="Input image channels.")]
OutChannels = Annotated[int | None, typer.Option(help="Output image channels (default: in-channels).")]
DropoutLayers = Annotated[int, typer.Option(help="Up layers with dropout, deepest first.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line at the end.")]

DEFAULT = VariantSpec()
DEFAULT_UPCONV = UpconvChoice(DEFAULT.upconv_type)


def variant(n_downs: int, features: int, block_type: str, upconv_type: UpconvChoice | str, input_size: int,
            in_channels: int, out_channels: int | None, use_dropout_layers: int) -> VariantSpec:
    """The variant the options describe; one the model rejects is an error with the model's message."""
    spec = VariantSpec(
        n_downs=n_downs, features=features, block_type=block_type, upconv_type=str(getattr(upconv_type, "value",
                                                                                             upconv_type)),
        input_size=input_size, in_channels=in_channels, out_channels=out_channels,
        use_dropout_layers=use_dropout_layers,
    )
    reason = spec.invalid_reason()
    if reason is not None:
        raise NectarGANError(reason)
    return spec
