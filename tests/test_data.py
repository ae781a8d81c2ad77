"""Paired data: the shipped dataset builder, the pix2pix format, augmentation and every bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from nectargan.data import PairedImageDataset
from nectargan.data.paired import DatasetError, default_load_size
from nectargan.data.samples import TASKS, build_sample_dataset, split_counts


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("task", TASKS)
def test_builder_writes_the_pix2pix_format(tmp_path, task):
    counts = build_sample_dataset(tmp_path, task, size=48, count=10, seed=1)
    assert counts == {"train": 8, "val": 1, "test": 1} == split_counts(10)
    for split, n in counts.items():
        files = sorted((tmp_path / split).glob("*.png"))
        assert len(files) == n
        for path in files:
            with Image.open(path) as image:
                assert image.size == (96, 48) and image.mode == "RGB"


def test_builder_is_deterministic_for_a_seed(tmp_path):
    build_sample_dataset(tmp_path / "a", "denoise", size=32, count=6, seed=7)
    build_sample_dataset(tmp_path / "b", "denoise", size=32, count=6, seed=7)
    build_sample_dataset(tmp_path / "c", "denoise", size=32, count=6, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_builder_tasks_make_the_promised_inputs(tmp_path):
    for task in TASKS:
        build_sample_dataset(tmp_path / task, task, size=64, count=3, seed=0)
    pair = lambda task: np.asarray(Image.open(next((tmp_path / task / "train").glob("*.png"))))
    edges = pair("edges2photo")[:, :64]
    assert set(np.unique(edges)) <= {0, 255} and (edges == 255).mean() > 0.5  # black lines on white
    grey = pair("gray2color")[:, :64].astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    noisy = pair("denoise").astype(int)
    residual = noisy[:, :64] - noisy[:, 64:]
    assert 0.15 * 255 < residual.std() < 0.21 * 255  # sigma 0.2 of the range (less where clipping cuts it)


def test_every_bundled_photo_loads_as_colour():
    from nectargan.data.samples import PHOTOS, _photos

    photos = _photos()
    assert len(photos) == len(PHOTOS) >= 9 and {"motorcycle", "grace_hopper"} <= set(PHOTOS)
    for photo in photos:
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 256
        assert np.ptp(photo[..., 0].astype(int) - photo[..., 2]) > 0  # colour, not grey in three channels


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"task": "edges"}, "task='edges'"), ({"size": 16}, "size=16"), ({"count": 2}, "count=2")],
)
def test_builder_rejects_bad_arguments(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_sample_dataset(tmp_path, **({"task": "edges2photo"} | kwargs))


def test_builder_never_overwrites(tmp_path):
    build_sample_dataset(tmp_path, "denoise", size=32, count=3)
    before = _digest(tmp_path)
    with pytest.raises(ValueError, match="already holds a dataset"):
        build_sample_dataset(tmp_path, "denoise", size=32, count=3, seed=5)
    assert _digest(tmp_path) == before


def test_train_items_are_cropped_flipped_and_normalised(sample_dataset):
    ds = PairedImageDataset(sample_dataset, "train", crop_size=64)
    assert len(ds) == 48 and ds.load_size == default_load_size(64) == 72 and ds.augment
    x, y = ds[0]
    assert x.shape == y.shape == (3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    val = PairedImageDataset(sample_dataset, "val", crop_size=64)
    assert not val.augment and val.load_size == 64
    vx, _vy = val[0]
    assert torch.equal(vx, val[0][0])  # no randomness outside training


def _write_pair(path, left, right):
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _pattern_dataset(tmp_path, n=4, size=16):
    """Pairs whose halves are identical, so any mismatch of the crop or flip between A and B shows."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split).mkdir(parents=True)
        for i in range(n):
            half = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            _write_pair(tmp_path / split / f"{i}.png", half, half)
    return tmp_path


def test_a_and_b_get_the_same_crop_and_flip(tmp_path):
    root = _pattern_dataset(tmp_path)
    ds = PairedImageDataset(root, "train", crop_size=8, load_size=16)
    for i in range(len(ds)):
        x, y = ds[i]
        assert torch.equal(x, y)
    pairs = ds.preload()
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = pairs.batch(torch.arange(4), g)
        assert x.shape == (4, 3, 8, 8) and torch.equal(x, y)


def test_preloaded_crops_come_from_the_image(tmp_path):
    root = _pattern_dataset(tmp_path, n=1)
    ds = PairedImageDataset(root, "train", crop_size=8, load_size=16)
    full = ds.load_pair(0)[0]
    pairs = ds.preload()
    x, _ = pairs.batch(torch.zeros(1, dtype=torch.long), torch.Generator().manual_seed(3))
    crop = ((x[0] + 1) * 127.5).round().to(torch.uint8)
    windows = full.unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4)  # (9, 9, C, 8, 8)
    found = any(torch.equal(w, crop) or torch.equal(w.flip(-1), crop) for w in windows.reshape(-1, 3, 8, 8))
    assert found


def test_direction_and_channels(tmp_path):
    (tmp_path / "val").mkdir()
    left = np.zeros((8, 8, 3), np.uint8)
    right = np.full((8, 8, 3), 255, np.uint8)
    _write_pair(tmp_path / "val" / "0.png", left, right)
    a2b = PairedImageDataset(tmp_path, "val", crop_size=8)
    b2a = PairedImageDataset(tmp_path, "val", crop_size=8, direction="BtoA")
    assert float(a2b[0][0].mean()) == -1.0 and float(a2b[0][1].mean()) == 1.0
    assert float(b2a[0][0].mean()) == 1.0 and float(b2a[0][1].mean()) == -1.0
    grey = PairedImageDataset(tmp_path, "val", crop_size=8, in_channels=1, out_channels=3)
    x, y = grey[0]
    assert x.shape == (1, 8, 8) and y.shape == (3, 8, 8)


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path, sample_dataset):
    with pytest.raises(DatasetError, match=r"dataset folder .*nowhere does not exist"):
        PairedImageDataset(tmp_path / "nowhere")
    (tmp_path / "only_val" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"train does not exist \(found splits: val\)"):
        PairedImageDataset(tmp_path / "only_val", "train")
    with pytest.raises(DatasetError, match=r"holds no \.png or \.jpg images"):
        PairedImageDataset(tmp_path / "only_val", "val")

    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DatasetError, match=r"broken\.png is unreadable or corrupt") as info:
        PairedImageDataset(tmp_path / "bad")
    assert "\n" not in str(info.value)
    (bad / "broken.png").unlink()

    good = next((sample_dataset / "train").glob("*.png")).read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"truncated\.png is unreadable or corrupt"):
        PairedImageDataset(tmp_path / "bad")
    (bad / "truncated.png").unlink()

    Image.new("RGB", (30, 20)).save(bad / "narrow.png")
    with pytest.raises(DatasetError, match=r"narrow\.png is 30x20: a pix2pix pair must be twice as wide"):
        PairedImageDataset(tmp_path / "bad")

    with pytest.raises(DatasetError, match=r"in_channels=2 cannot be made from images"):
        PairedImageDataset(sample_dataset, "val", in_channels=2)
    with pytest.raises(ValueError, match=r"split='training'"):
        PairedImageDataset(sample_dataset, "training")
    with pytest.raises(ValueError, match=r"direction='AB'"):
        PairedImageDataset(sample_dataset, "val", direction="AB")
