"""NectarGAN's PatchGAN discriminator."""

from nectargan.models.patchgan.blocks import CNNBlock
from nectargan.models.patchgan.model import Discriminator

__all__ = ["CNNBlock", "Discriminator"]
