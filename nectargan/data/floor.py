"""The floor a trained generator must beat: two trivial predictors scored like the trainer's validation.

* **copy the input**: the output is the input image itself (only when input and target have the same
  channel count; otherwise it is left out, with the reason);
* **the mean training target**: every output is the per-pixel mean of the training split's targets,
  resized to the crop size (no crop or flip), the best fixed image under squared error.

Both are scored on the val split exactly as :func:`nectargan.train.evaluate` scores a generator: the
same images (resized to the crop size), :func:`nectargan.metrics.image_metrics` (PSNR and SSIM on
[0, 1], per image, then averaged). A generator whose val PSNR is not at least :data:`LEARN_MARGIN_DB`
above the better of the two did not learn anything a constant or a copy could not give.

The floor depends only on the dataset's train and val files, the crop size, the direction and the
channel counts, so it is computed once: :func:`trivial_floor` caches it in a small JSON file in the
dataset folder (``.floor-<size>px-<direction>-<in>to<out>.json``, keyed by those settings and a
fingerprint of the files' names, sizes and modification times). A folder that cannot be written is
simply not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nectargan.data.paired import PairedImageDataset, to_unit_range
from nectargan.metrics import image_metrics

LEARN_MARGIN_DB = 1.0  # a generator "learned" when its val PSNR beats the better trivial predictor by this much
FLOOR_VERSION = 1  # bump when the computation changes: cached floors of another version are recomputed
COPY, MEAN = "copy input", "mean target"


@dataclass(frozen=True)
class Floor:
    """Val PSNR (dB) and SSIM of the trivial predictors; ``copy_*`` are None where copying cannot apply."""

    mean_psnr: float
    mean_ssim: float
    copy_psnr: float | None
    copy_ssim: float | None
    copy_note: str | None  # why copying the input is left out (None when it is scored)
    size: int
    val_images: int
    train_images: int

    @property
    def best(self) -> str:
        """The better predictor's name (by PSNR): :data:`COPY` or :data:`MEAN`."""
        return COPY if self.copy_psnr is not None and self.copy_psnr > self.mean_psnr else MEAN

    @property
    def best_psnr(self) -> float:
        return self.copy_psnr if self.best == COPY else self.mean_psnr  # type: ignore[return-value]

    def margin(self, psnr: float | None) -> float | None:
        """dB by which ``psnr`` beats the better trivial predictor (negative: below it)."""
        if psnr is None:
            return None
        return psnr - self.best_psnr  # NaN when both are infinite (identical images)

    def learned(self, psnr: float | None, margin_db: float = LEARN_MARGIN_DB) -> bool | None:
        """Whether ``psnr`` beats the better trivial predictor by ``margin_db`` (None: no figure)."""
        over = self.margin(psnr)
        return None if over is None or math.isnan(over) else over >= margin_db

    def describe(self) -> str:
        """``copy input 20.10 dB, mean target 14.20 dB`` (or the reason copying is left out)."""
        copy = f"copy input {self.copy_psnr:.2f} dB" if self.copy_psnr is not None else \
            f"copy input left out ({self.copy_note})"
        return f"{copy}, mean target {self.mean_psnr:.2f} dB"

    def verdict(self, psnr: float | None, margin_db: float = LEARN_MARGIN_DB) -> str:
        """One clause for a run's val PSNR: ``beat by +3.40 dB`` or ``did not learn: ...``."""
        over = self.margin(psnr)
        if over is None or math.isnan(over):
            return "no val PSNR to compare"
        if over >= margin_db:
            return f"beat by {over:+.2f} dB"
        return (f"did not learn: {psnr:.2f} dB is not {margin_db:g} dB above the {self.best}'s "
                f"{self.best_psnr:.2f} dB ({over:+.2f} dB)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"best": self.best, "best_psnr": self.best_psnr, "margin_db": LEARN_MARGIN_DB}

    @classmethod
    def from_dict(cls, data: Any) -> Floor | None:
        """The floor stored by :meth:`to_dict` (a study's user attribute, a summary.json); None if it is not one."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            return None


def _cache_path(root: Path, size: int, direction: str, in_channels: int, out_channels: int) -> Path:
    return root / f".floor-{size}px-{direction}-{in_channels}to{out_channels}.json"


def _fingerprint(*datasets: PairedImageDataset) -> str:
    digest = hashlib.sha256(f"v{FLOOR_VERSION}".encode())
    for dataset in datasets:
        for path in dataset.files:
            stat = path.stat()
            digest.update(f"{dataset.split}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> Floor | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return None
    return Floor.from_dict(data.get("floor"))


def _write_cache(path: Path, fingerprint: str, floor: Floor) -> None:
    """Atomically (several workers may compute the same floor at once); silently not where it cannot."""
    with contextlib.suppress(OSError):
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump({"fingerprint": fingerprint, "floor": asdict(floor)}, file)
            os.replace(name, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)


def trivial_floor(root: str | Path, size: int, direction: str = "AtoB", in_channels: int = 3,
                  out_channels: int | None = None, write_cache: bool = True) -> Floor:
    """The floor of dataset ``root`` at crop ``size`` (see the module docstring): the cached one when the
    dataset folder holds it for these files and settings, else computed (and cached unless ``write_cache``
    is off: then nothing is written).

    Raises:
        DatasetError / InvalidArgumentError: for a dataset or settings the trainer would refuse.
    """
    out_channels = in_channels if out_channels is None else out_channels
    kwargs = {"crop_size": size, "direction": direction, "in_channels": in_channels, "out_channels": out_channels,
              "augment": False}
    val = PairedImageDataset(root, "val", **kwargs)
    train = PairedImageDataset(root, "train", **kwargs)
    path = _cache_path(Path(root), size, direction, in_channels, out_channels)
    fingerprint = _fingerprint(train, val)
    cached = _read_cache(path, fingerprint)
    if cached is not None:
        return cached
    floor = compute_floor(train, val)
    if write_cache:
        _write_cache(path, fingerprint, floor)
    return floor


@torch.no_grad()
def compute_floor(train: PairedImageDataset, val: PairedImageDataset, batch_size: int = 16) -> Floor:
    """The trivial predictors of ``val``, the mean target taken over ``train`` (both without augmentation)."""
    total = None
    for index in range(len(train)):
        target = to_unit_range(train.load_pair(index)[1]).double()
        total = target if total is None else total + target
    mean = (total / len(train)).float()
    pairs = val.preload("cpu")
    same_channels = pairs.a.shape[1] == pairs.b.shape[1]
    sums = {"mean_psnr": 0.0, "mean_ssim": 0.0, "copy_psnr": 0.0, "copy_ssim": 0.0}
    n = len(pairs)
    for start in range(0, n, batch_size):
        x, y = pairs.batch(torch.arange(start, min(n, start + batch_size)))
        scored = {"mean": image_metrics(mean.expand_as(y), y)}
        if same_channels:
            scored["copy"] = image_metrics(x, y)
        for name, metrics in scored.items():
            sums[f"{name}_psnr"] += float(metrics["psnr"].sum())
            sums[f"{name}_ssim"] += float(metrics["ssim"].sum())
    note = None if same_channels else (f"the input has {pairs.a.shape[1]} channels and the target "
                                       f"{pairs.b.shape[1]}, so the input cannot be a prediction of it")
    return Floor(
        mean_psnr=sums["mean_psnr"] / n, mean_ssim=sums["mean_ssim"] / n,
        copy_psnr=sums["copy_psnr"] / n if same_channels else None,
        copy_ssim=sums["copy_ssim"] / n if same_channels else None,
        copy_note=note, size=train.crop_size, val_images=n, train_images=len(train),
    )
