"""Build a small pix2pix-format dataset from the colour photographs installed with our dependencies.

Nothing is downloaded: the photos are the colour photographs inside the scikit-image wheel (the
left view of its stereo motorcycle pair included) and matplotlib's sample photo of Grace Hopper.
Each pair is a random square crop (random scale and position) of one photo, resized to ``size``; A is
derived from it by the task, B is the crop itself:

* ``denoise``: A = the photo with Gaussian noise (sigma ``NOISE_SIGMA`` = 0.2 of the range). The
  default study's task: chosen by measurement because it is the one a generator learns within a
  short CPU budget (2 cores, 64 px, 30 s: NectarGAN's default beats copying the noisy input by
  about 5 dB; at sigma 0.1 it needed 60 s to beat it at all, and Canny edges were not learned in 60 s);
* ``edges2photo``: A = Canny edges (black lines on white), as in edges2shoes;
* ``gray2color``: A = the greyscale photo.

The same seed gives byte-identical files. Pairs are split 80/10/10 into train/val/test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from nectargan.errors import InvalidArgumentError

TASKS = ("denoise", "edges2photo", "gray2color")
NOISE_SIGMA = 0.2  # of the 0..255 range, for ``denoise``
MIN_SIZE, MAX_SIZE = 32, 512


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB"))


# Every colour photograph installed with scikit-image and matplotlib (no network needed); scikit-image's
# colour wheel and logo are drawings, not photos, and are left out.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    **{name: _skimage(name) for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                                         "immunohistochemistry", "retina")},
    "motorcycle": _motorcycle,
    "grace_hopper": _grace_hopper,
}


def _photos() -> list[np.ndarray]:
    return [load()[..., :3] for load in PHOTOS.values()]


def _random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = photo.shape[:2]
    side = int(rng.integers(min(size, h, w), min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(crop)


def _edges(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.feature import canny

    edges = canny(rgb2gray(photo), sigma=max(1.0, photo.shape[0] / 128))
    return np.repeat(np.where(edges, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _gray(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    return np.repeat(grey[..., None], 3, axis=2)


def _noisy(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.normal(0.0, NOISE_SIGMA * 255, size=photo.shape)
    return np.clip(photo.astype(np.float64) + noise, 0, 255).astype(np.uint8)


_DERIVE: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "denoise": _noisy,
    "edges2photo": _edges,
    "gray2color": _gray,
}


def split_counts(count: int) -> dict[str, int]:
    """80/10/10, with at least one val and one test pair."""
    val = max(1, round(count * 0.1))
    test = max(1, round(count * 0.1))
    return {"train": count - val - test, "val": val, "test": test}


def build_sample_dataset(
    out: str | Path, task: str = "edges2photo", size: int = 64, count: int = 200, seed: int = 0
) -> dict[str, int]:
    """Write ``count`` pairs (A|B side by side, PNG) into ``out/{train,val,test}``; return the split sizes.

    Raises:
        InvalidArgumentError: for an unknown task, a size outside 32..512 or a count below 3;
            and when ``out`` already holds images (nothing is overwritten).
    """
    if task not in TASKS:
        raise InvalidArgumentError(f"task={task!r} is not valid: use one of {', '.join(TASKS)}")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InvalidArgumentError(f"size={size!r} is not valid: use an integer from {MIN_SIZE} to {MAX_SIZE}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 3:
        raise InvalidArgumentError(f"count={count!r} is not valid: use an integer >= 3 (train, val and test)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out={str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.glob("*/*.png")):
        raise InvalidArgumentError(f"out={str(out)!r} already holds a dataset; choose an empty folder")
    rng = np.random.default_rng(seed)
    photos = _photos()
    derive = _DERIVE[task]
    counts = split_counts(count)
    index = 0
    for split, n in counts.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            photo = photos[int(rng.integers(len(photos)))]
            b = _random_crop(photo, size, rng)
            a = derive(b, rng)
            Image.fromarray(np.concatenate([a, b], axis=1)).save(folder / f"{index:05d}.png", optimize=False)
            index += 1
    return counts
