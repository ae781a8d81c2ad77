"""The model family: UNet generators (``unet``), the PatchGAN discriminator (``patchgan``), checkpoints."""

from nectargan.models.checkpoint import (
    infer_generator_config,
    load_discriminator,
    load_generator,
    load_weights,
    read_state_dict,
    save_checkpoint,
)
from nectargan.models.patchgan.model import Discriminator
from nectargan.models.unet.blocks import (
    ResidualUnetBlock,
    UnetBlock,
    get_block,
    list_blocks,
    register_block,
)
from nectargan.models.unet.model import (
    UnetGenerator,
    build_channel_map,
    min_input_size,
    validate_generator_args,
)

__all__ = [
    "Discriminator",
    "ResidualUnetBlock",
    "UnetBlock",
    "UnetGenerator",
    "build_channel_map",
    "get_block",
    "infer_generator_config",
    "list_blocks",
    "load_discriminator",
    "load_generator",
    "load_weights",
    "min_input_size",
    "read_state_dict",
    "register_block",
    "save_checkpoint",
    "validate_generator_args",
]
