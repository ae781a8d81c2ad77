"""Paired images in the pix2pix format: ``root/{train,val,test}/*.png|jpg``, A left, B right.

Training samples are resized to ``load_size``, randomly cropped to ``crop_size`` and flipped
horizontally with probability 0.5, the same crop and flip for A and B; val/test samples are only
resized to ``crop_size``. Values are normalised to [-1, 1]. Images are converted to the model's
channel count (1: grey, 3: RGB, 4: RGBA).

Every file is checked when the dataset is opened (size, decodability, channel conversion), so a bad
file is a one-line error naming it before training starts, not a crash in a loader worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nectargan.errors import InvalidArgumentError, NectarGANError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIRECTIONS = ("AtoB", "BtoA")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class DatasetError(NectarGANError, ValueError):
    """A dataset folder or file that cannot be used."""


def default_load_size(crop_size: int) -> int:
    """pix2pix's 286 -> 256 ratio, for any crop size (64 -> 72, 256 -> 286)."""
    return round(crop_size * 286 / 256)


def _mode_for(channels: int, what: str) -> str:
    if channels not in _MODES:
        raise DatasetError(
            f"{what}={channels} cannot be made from images: use 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    return _MODES[channels]


def _open_checked(path: Path, mode: str, verify: bool = True) -> Image.Image:
    """Decode ``path`` and convert it to ``mode``; every failure names the file.

    ``verify`` also runs PIL's integrity check first (done once, when the dataset is opened).
    """
    try:
        if verify:
            with Image.open(path) as probe:
                probe.verify()
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"image {path} is unreadable or corrupt ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width != 2 * height:
        raise DatasetError(
            f"image {path} is {width}x{height}: a pix2pix pair must be twice as wide as it is high "
            "(A on the left half, B on the right)"
        )
    try:
        return image if image.mode == mode else image.convert(mode)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"image {path} (mode {image.mode}) cannot be converted to {mode}: {exc}") from None


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 CHW tensor."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return x.float().div_(127.5).sub_(1.0)


class PairedImageDataset(torch.utils.data.Dataset):
    """One split of a pix2pix-format dataset; items are ``(input, target)`` float tensors in [-1, 1].

    Args:
        root: Folder holding ``train/``, ``val/`` and ``test/``.
        split: Which of them.
        crop_size: Side of the returned images (the generator's ``input_size``).
        load_size: Side the training images are resized to before the random crop
            (default: :func:`default_load_size`).
        direction: ``'AtoB'`` (input = left half) or ``'BtoA'``.
        in_channels / out_channels: Channels of the input and target images.
        augment: Random crop and flip; default on for ``train`` only.
        seed: Seed of the augmentation's random numbers (per item, reproducible).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop_size: int = 256,
        load_size: int | None = None,
        direction: str = "AtoB",
        in_channels: int = 3,
        out_channels: int | None = None,
        augment: bool | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise InvalidArgumentError(f"split={split!r} is not valid: use one of {', '.join(SPLITS)}")
        if direction not in DIRECTIONS:
            raise InvalidArgumentError(f"direction={direction!r} is not valid: use 'AtoB' or 'BtoA'")
        self.in_mode = _mode_for(in_channels, "in_channels")
        self.out_mode = _mode_for(out_channels if out_channels is not None else in_channels, "out_channels")
        self.root = Path(root)
        self.split = split
        self.crop_size = crop_size
        self.augment = split == "train" if augment is None else augment
        self.load_size = (load_size or default_load_size(crop_size)) if self.augment else crop_size
        if self.load_size < crop_size:
            raise InvalidArgumentError(f"load_size={self.load_size} is smaller than crop_size={crop_size}")
        self.direction = direction
        self.seed = seed
        self.epoch = 0
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist")
        folder = self.root / split
        if not folder.is_dir():
            found = [s for s in SPLITS if (self.root / s).is_dir()]
            raise DatasetError(
                f"dataset folder {folder} does not exist (found splits: {', '.join(found) or 'none'}); "
                f"expected {self.root}/{{train,val,test}}/*.png|jpg"
            )
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DatasetError(f"split {folder} holds no .png or .jpg images")
        for path in self.files:  # validate everything up front
            for mode in {self.in_mode, self.out_mode}:
                _open_checked(path, mode)

    def __len__(self) -> int:
        return len(self.files)

    def load_pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and target halves as uint8 CHW tensors at ``load_size`` (no augmentation)."""
        path = self.files[index]
        halves = []
        for mode, box_index in ((self.in_mode, 0), (self.out_mode, 1)):
            if self.direction == "BtoA":
                box_index = 1 - box_index
            image = _open_checked(path, mode, verify=False)
            h = image.size[1]
            half = image.crop((box_index * h, 0, (box_index + 1) * h, h))
            if half.size != (self.load_size, self.load_size):
                half = half.resize((self.load_size, self.load_size), Image.Resampling.BICUBIC)
            halves.append(_to_tensor(half))
        return halves[0], halves[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.load_pair(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            a, b = random_crop_flip(a[None], b[None], self.crop_size, rng)
            a, b = a[0], b[0]
        return to_unit_range(a), to_unit_range(b)

    def preload(self, device: torch.device | str = "cpu") -> PreloadedPairs:
        """Every pair as uint8 tensors on ``device`` (at ``load_size``), for batching without a loader."""
        pairs = [self.load_pair(i) for i in range(len(self))]
        a = torch.stack([p[0] for p in pairs]).to(device)
        b = torch.stack([p[1] for p in pairs]).to(device)
        return PreloadedPairs(a, b, self.crop_size, self.augment)

    def nbytes(self) -> int:
        """Bytes :meth:`preload` would hold."""
        channels = len(self.in_mode) + len(self.out_mode)
        return len(self) * channels * self.load_size**2


def random_crop_flip(
    a: torch.Tensor, b: torch.Tensor, crop: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop and horizontal flip for each pair of a (N, C, H, W) batch (host side)."""
    n, _, h, w = a.shape
    out_a, out_b = [], []
    for i in range(n):
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        pa = a[i, :, top:top + crop, left:left + crop]
        pb = b[i, :, top:top + crop, left:left + crop]
        if rng.random() < 0.5:
            pa, pb = pa.flip(-1), pb.flip(-1)
        out_a.append(pa)
        out_b.append(pb)
    return torch.stack(out_a), torch.stack(out_b)


@dataclass
class PreloadedPairs:
    """A whole split as uint8 tensors on one device; batches are cropped and flipped on that device.

    Sampling draws its random numbers on the device, so a training step never waits for the host.
    """

    a: torch.Tensor
    b: torch.Tensor
    crop_size: int
    augment: bool

    def __len__(self) -> int:
        return self.a.shape[0]

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float [-1, 1] (input, target) for ``indices`` (a device tensor), augmented if training."""
        a, b = self.a[indices], self.b[indices]
        if self.augment:
            a, b = self._crop_flip(a, b, generator)
        return to_unit_range(a), to_unit_range(b)

    def _crop_flip(self, a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None):
        n, _, h, w = a.shape
        crop, device = self.crop_size, a.device
        top = torch.randint(0, h - crop + 1, (n,), device=device, generator=generator)
        left = torch.randint(0, w - crop + 1, (n,), device=device, generator=generator)
        flip = torch.rand(n, device=device, generator=generator) < 0.5
        steps = torch.arange(crop, device=device)
        rows = (top[:, None] + steps)[:, None, :, None]
        cols = left[:, None] + steps
        cols = torch.where(flip[:, None], cols.flip(-1), cols)[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channels_a = torch.arange(a.shape[1], device=device)[None, :, None, None]
        channels_b = torch.arange(b.shape[1], device=device)[None, :, None, None]
        return a[batch, channels_a, rows, cols], b[batch, channels_b, rows, cols]
