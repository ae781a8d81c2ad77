"""The two networks of a pix2pix run: checked on the meta device first, then built on the run's device."""

from __future__ import annotations

import torch

from nectargan.errors import InvalidArgumentError
from nectargan.models.patchgan.model import Discriminator
from nectargan.models.unet.model import UnetGenerator
from nectargan.train.config import Resolved, TrainConfig, memory_reason


def _discriminator(config: TrainConfig, generator: UnetGenerator, n_layers: int | None = None) -> Discriminator:
    return Discriminator(
        in_channels=generator.in_channels, base_channels=config.d_features,
        n_layers=config.d_layers if n_layers is None else n_layers, target_channels=generator.out_channels,
    )


def check_models(config: TrainConfig, run: Resolved) -> None:
    """Build G and D on the meta device (nothing allocated) and check what would fail later.

    The generator's arguments; ``d_layers`` against the image size (each PatchGAN layer but the last
    two halves the image, and at least one patch must remain: at most 4 layers at 32 px, 5 at 64, 7
    at 256); and memory: fp32 weights, gradients and two Adam moments of both networks must fit on the
    device (:func:`~nectargan.train.config.memory_reason`).
    """
    with torch.device("meta"):
        generator = UnetGenerator(**config.generator)
        discriminator = _discriminator(config, generator)
        size = generator.input_size
        try:
            discriminator.output_size(size)
        except InvalidArgumentError:
            fits = [n for n in range(1, config.d_layers) if _leaves_a_patch(_discriminator(config, generator, n), size)]
            hint = f"use d_layers <= {fits[-1]} at this size, or a larger input_size" if fits else (
                "use a larger input_size")
            raise InvalidArgumentError(
                f"d_layers={config.d_layers} is too deep for input_size={size}: the PatchGAN discriminator's "
                f"downsamplings would leave no patch; {hint}"
            ) from None
    params = sum(p.numel() for model in (generator, discriminator) for p in model.parameters())
    reason = memory_reason("the generator and discriminator", params, "training", run.device)
    if reason is not None:
        raise InvalidArgumentError(reason)


def _leaves_a_patch(discriminator: Discriminator, size: int) -> bool:
    try:
        discriminator.output_size(size)
    except InvalidArgumentError:
        return False
    return True


def build_models(config: TrainConfig, run: Resolved) -> tuple[UnetGenerator, Discriminator]:
    """G and D of ``config`` on the run's device, in its memory format."""
    generator = UnetGenerator(**config.generator)
    discriminator = _discriminator(config, generator)
    memory_format = torch.channels_last if run.channels_last else torch.preserve_format
    generator.to(run.device, memory_format=memory_format)
    discriminator.to(run.device, memory_format=memory_format)
    return generator, discriminator
