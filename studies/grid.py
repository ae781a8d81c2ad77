"""An image grid that shows the answer: input | baseline | best quality | fastest close to it | target.

Each trial keeps its trained generator (``weights``, NectarGAN's checkpoint format) and its folder
(``out``, with the trainer's ``config.json``); the grid regenerates outputs for the first val images
with :func:`nectargan.models.load_generator`, in eval mode, fp32 on the CPU, as
:func:`nectargan.train.evaluate` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from optuna.trial import FrozenTrial
from PIL import Image, ImageDraw, ImageFont

from nectargan.data.paired import PairedImageDataset
from nectargan.models import load_generator

MIN_TILE = 128  # small images are enlarged (nearest) so the grid can be read
HEADER = 30


def _tile(image: torch.Tensor, side: int) -> Image.Image:
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    tile = Image.fromarray(np.ascontiguousarray(array[:, :, :3]))
    return tile.resize((side, side), Image.Resampling.NEAREST) if tile.size[0] != side else tile


def _config(trial: FrozenTrial) -> dict | None:
    out = trial.user_attrs.get("out")
    path = Path(out) / "config.json" if isinstance(out, str) else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def write_grid(columns: list[tuple[str, FrozenTrial]], path: Path, count: int = 4) -> tuple[Path | None, list[str]]:
    """Write the grid for ``columns`` (label, trial); return its path (None when impossible) and notes.

    A column whose weights are missing is left out with a note; so is the whole grid when no trial
    has its folder (trials that ran on another machine).
    """
    notes: list[str] = []
    usable: list[tuple[str, FrozenTrial, dict]] = []
    for label, trial in columns:
        weights, config = trial.user_attrs.get("weights"), _config(trial)
        if not isinstance(weights, str) or not Path(weights).is_file() or config is None:
            notes.append(f"{label} (trial {trial.number}): its weights or config.json are not on this machine "
                         f"({trial.user_attrs.get('out', 'no folder recorded')})")
            continue
        usable.append((label, trial, config))
    if not usable:
        return None, notes
    config = usable[0][2]
    generator_kwargs = config["generator"]
    size = int(generator_kwargs["input_size"])
    val = PairedImageDataset(
        config["data"], "val", crop_size=size, direction=config.get("direction", "AtoB"),
        in_channels=int(generator_kwargs.get("in_channels", 3)), out_channels=generator_kwargs.get("out_channels"),
    ).preload("cpu")
    n = min(count, len(val))
    x, y = val.batch(torch.arange(n))
    outputs = []
    for _label, trial, trial_config in usable:
        kwargs = trial_config["generator"]
        generator = load_generator(trial.user_attrs["weights"], input_size=size,
                                   use_dropout_layers=int(kwargs.get("use_dropout_layers", 3))).eval()
        with torch.no_grad():
            outputs.append(generator(x).float())
    labels = ["input"] + [label for label, _, _ in usable] + ["target"]
    images = [x, *outputs, y]
    side = max(size, MIN_TILE)
    grid = Image.new("RGB", (side * len(images), HEADER + side * n), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for column, (label, batch) in enumerate(zip(labels, images, strict=True)):
        for line, text in enumerate(label.split("\n")[:2]):
            draw.text((column * side + 3, 2 + line * 13), text, fill="black", font=font)
        for row in range(n):
            grid.paste(_tile(batch[row], side), (column * side, HEADER + row * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path, notes
