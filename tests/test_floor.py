"""The floor: trivial predictors of a dataset (copy the input, the mean training target), checked by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from nectargan.data.floor import COPY, MEAN, Floor, trivial_floor
from nectargan.errors import NectarGANError

SIDE = 32


def _pair(path, a: int, b: int) -> None:
    """One pix2pix file: A a flat grey of value ``a`` on the left, B of value ``b`` on the right (RGB)."""
    image = np.zeros((SIDE, 2 * SIDE, 3), dtype=np.uint8)
    image[:, :SIDE] = a
    image[:, SIDE:] = b
    Image.fromarray(image).save(path)


@pytest.fixture
def flat_dataset(tmp_path):
    """Train targets 40, 80, 120 (mean 80); val pairs (A 90, B 100) and (A 90, B 60)."""
    root = tmp_path / "flat"
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
    for i, b in enumerate((40, 80, 120)):
        _pair(root / "train" / f"{i}.png", 0, b)
    _pair(root / "val" / "0.png", 90, 100)
    _pair(root / "val" / "1.png", 90, 60)
    _pair(root / "test" / "0.png", 0, 0)
    return root


def _psnr(error: int) -> float:
    """PSNR in dB of a flat error of ``error`` grey levels (data range 1 = 255 levels)."""
    return 20 * math.log10(255 / error)


def test_floor_matches_a_hand_computation_and_is_cached(flat_dataset):
    floor = trivial_floor(flat_dataset, SIDE)
    # the mean target is 80 everywhere: 20 levels off both val targets
    assert floor.mean_psnr == pytest.approx(_psnr(20), abs=1e-3)
    # copying the input (90) is 10 and 30 levels off; PSNR is averaged per image, as in the trainer's validation
    assert floor.copy_psnr == pytest.approx((_psnr(10) + _psnr(30)) / 2, abs=1e-3)
    assert 0 < floor.copy_ssim <= 1 and 0 < floor.mean_ssim <= 1
    assert (floor.val_images, floor.train_images, floor.size) == (2, 3, SIDE)
    assert floor.best == COPY and floor.best_psnr == floor.copy_psnr
    assert floor.learned(floor.copy_psnr + 0.99) is False and floor.learned(floor.copy_psnr + 1.0) is True
    assert "did not learn" in floor.verdict(floor.copy_psnr) and "beat by +2.00 dB" in floor.verdict(
        floor.copy_psnr + 2)

    cache = flat_dataset / f".floor-{SIDE}px-AtoB-3to3.json"
    stored = json.loads(cache.read_text())
    stored["floor"]["mean_psnr"] = 99.0  # a cached figure is what a second call returns ...
    cache.write_text(json.dumps(stored))
    assert trivial_floor(flat_dataset, SIDE).mean_psnr == 99.0
    _pair(flat_dataset / "train" / "3.png", 0, 80)  # ... until the files change
    again = trivial_floor(flat_dataset, SIDE)
    assert again.mean_psnr == pytest.approx(_psnr(20), abs=1e-3) and again.train_images == 4
    assert Floor.from_dict(again.to_dict()) == again


def test_floor_without_copy_when_channels_differ_and_writes_nothing_when_asked(flat_dataset):
    floor = trivial_floor(flat_dataset, SIDE, in_channels=1, out_channels=3, write_cache=False)
    assert floor.copy_psnr is None and floor.copy_ssim is None and "1 channels and the target 3" in floor.copy_note
    assert floor.best == MEAN and floor.mean_psnr == pytest.approx(_psnr(20), abs=1e-3)
    assert "copy input left out" in floor.describe()
    assert not list(flat_dataset.glob(".floor-*"))


def test_a_missing_dataset_is_a_one_line_error(tmp_path):
    with pytest.raises(NectarGANError, match="does not exist") as caught:
        trivial_floor(tmp_path / "nowhere", SIDE)
    assert "\n" not in str(caught.value)
