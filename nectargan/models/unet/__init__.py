"""NectarGAN's UNet generator and its drop-in blocks."""

from nectargan.models.unet.blocks import ResidualUnetBlock, UnetBlock, get_block, list_blocks, register_block
from nectargan.models.unet.model import UnetGenerator

__all__ = ["ResidualUnetBlock", "UnetBlock", "UnetGenerator", "get_block", "list_blocks", "register_block"]
