"""NectarGAN's UNet generator family, PatchGAN discriminator and pix2pix pieces, checkpoint-compatible.

Import paths follow NectarGAN (``nectargan.models.unet.model.UnetGenerator``); the common names are
also available here, loaded on first use so that ``import nectargan`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("nectargan-bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "UnetGenerator": "nectargan.models.unet.model",
    "UnetBlock": "nectargan.models.unet.blocks",
    "ResidualUnetBlock": "nectargan.models.unet.blocks",
    "register_block": "nectargan.models.unet.blocks",
    "get_block": "nectargan.models.unet.blocks",
    "list_blocks": "nectargan.models.unet.blocks",
    "Discriminator": "nectargan.models.patchgan.model",
    "load_generator": "nectargan.models.checkpoint",
    "load_discriminator": "nectargan.models.checkpoint",
    "load_weights": "nectargan.models.checkpoint",
    "save_checkpoint": "nectargan.models.checkpoint",
    "NectarGANError": "nectargan.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nectargan' has no attribute {name!r}")
