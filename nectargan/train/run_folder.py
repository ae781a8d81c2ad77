"""What a training run writes to its folder, and how a folder is refused, undone or kept.

A run folder holds ``config.json`` (the settings as given, and as resolved on the device),
``metrics.csv`` (one row per log or evaluation), ``samples/step_N.png``, the checkpoints
``netG.pth.tar`` / ``netD.pth.tar`` and ``summary.json``. :func:`~nectargan.train.loop.fit` decides
when; this module knows the files.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from nectargan.errors import InvalidArgumentError
from nectargan.models.checkpoint import save_checkpoint
from nectargan.train.config import Resolved, TrainConfig
from nectargan.train.step import Pix2PixStep

METRIC_COLUMNS = [
    "step", "elapsed_s", "img_per_s", "lr", "loss_d", "loss_g_gan", "loss_g_l1", "val_l1", "val_psnr", "val_ssim",
]
KEPT_ON_INTERRUPT = ["netG.pth.tar", "netD.pth.tar", "summary.json", "metrics.csv", "samples", "config.json"]


def check_run_folder(out: Path | None) -> None:
    """Refuse a run folder that cannot take a new run, saying what is in it."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out={str(out)!r} exists and is not a folder")
    if not (out / "metrics.csv").exists():
        return
    try:
        previous = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict):
        state = "no summary.json: still running, or stopped without one"
    elif previous.get("interrupted"):
        state = f"interrupted at step {previous.get('steps')}"
    else:
        state = f"finished after {previous.get('steps')} steps"
    raise InvalidArgumentError(
        f"out={str(out)!r} already holds a training run ({state}); training does not resume from a folder, "
        "so choose a new folder"
    )


def write_run_config(out: Path, config: TrainConfig, run: Resolved, preload: bool) -> Path:
    """``config.json``: the settings as given, and under ``resolved`` what ``auto`` became on this device."""
    resolved = {"device": str(run.device), "precision": run.precision, "channels_last": run.channels_last,
                "compile": run.compile, "preload": preload}
    path = out / "config.json"
    path.write_text(json.dumps(config.to_dict() | {"resolved": resolved}, indent=2) + "\n")
    return path


class MetricsWriter:
    """``metrics.csv``: the header at once, then one row per record (nothing without a folder)."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(METRIC_COLUMNS)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(record.get(c)) for c in METRIC_COLUMNS])


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def save_samples(path: Path, triple: tuple[torch.Tensor, torch.Tensor, torch.Tensor], count: int) -> Path:
    """A PNG grid: one row per image, input | output | target."""
    rows = []
    for x, out, y in zip(*(t[:count] for t in triple), strict=True):
        tiles = []
        for image in (x, out, y):
            array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            if array.shape[2] == 1:
                array = np.repeat(array, 3, axis=2)
            tiles.append(array[:, :, :3])
        rows.append(np.concatenate(tiles, axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def save_run(out: Path, config: TrainConfig, generator: torch.nn.Module, discriminator: torch.nn.Module,
             step_fn: Pix2PixStep, summary: dict[str, Any]) -> None:
    """The checkpoints (with their optimizers, unless ``save_checkpoints`` is off), then ``summary.json``."""
    if config.save_checkpoints:
        save_checkpoint(out / "netG.pth.tar", generator, step_fn.opt_g)
        save_checkpoint(out / "netD.pth.tar", discriminator, step_fn.opt_d)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def keep_interrupted(out: Path | None, config: TrainConfig, generator: torch.nn.Module,
                     discriminator: torch.nn.Module, step_fn: Pix2PixStep, summary: dict[str, Any]) -> list[str]:
    """After Ctrl-C: the checkpoints as they are and a summary marked interrupted; the names kept."""
    if out is None:
        return []
    save_run(out, config, generator, discriminator, step_fn, summary)
    return [name for name in KEPT_ON_INTERRUPT if (out / name).exists()]


def remove_created(out: Path | None, created: bool, written: list[Path]) -> None:
    """Undo a run that failed before its first step: the folder if this run made it, else its files."""
    if out is None:
        return
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in written:
        path.unlink(missing_ok=True)
