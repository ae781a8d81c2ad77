"""Paired image data in the pix2pix format, and a small dataset built from scikit-image's photos."""

from nectargan.data.paired import (
    IMAGE_SUFFIXES,
    SPLITS,
    PairedImageDataset,
    PreloadedPairs,
    default_load_size,
)

__all__ = ["IMAGE_SUFFIXES", "SPLITS", "PairedImageDataset", "PreloadedPairs", "default_load_size"]
