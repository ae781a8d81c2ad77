"""An image grid that shows the answer: input | baseline | best quality | fastest close to it | target.

Each trial keeps its trained generator (``weights``, NectarGAN's checkpoint format) and its folder
(``out``, with the trainer's ``config.json``); the grid regenerates outputs for the first val images
with :func:`nectargan.models.load_generator`, in eval mode, fp32 on the CPU, as
:func:`nectargan.train.evaluate` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


LINE_PX = 15
FONT_PX = 12


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in TrueType font at 12 px (its bitmap fallback where FreeType is missing: the bitmap
    font's spaces are one pixel wide, so "11.19 dB 63.2 img/s" read as one word)."""
    try:
        return ImageFont.load_default(size=FONT_PX)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType
        return ImageFont.load_default()


def _wrap(label: str, width_of: Callable[[str], float], width: float) -> list[str]:
    """The label's lines, each broken at spaces to fit ``width`` pixels of its column (a word longer than
    the column is cut), so that no label runs into its neighbour's ("best PSNRt2")."""
    lines: list[str] = []
    for part in label.split("\n"):
        line = ""
        for word in part.split():
            candidate = f"{line} {word}".strip()
            if line and width_of(candidate) > width:
                lines.append(line)
                candidate = word
            while width_of(candidate) > width and len(candidate) > 1:
                candidate = candidate[:-1]
            line = candidate
        lines.append(line)
    return lines


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
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(label, lambda text: measure.textlength(text, font=font), side - 6) for label in labels]
    header = max(HEADER, 4 + LINE_PX * max(len(lines) for lines in wrapped))
    grid = Image.new("RGB", (side * len(images), header + side * n), "white")
    draw = ImageDraw.Draw(grid)
    for column, (lines, batch) in enumerate(zip(wrapped, images, strict=True)):
        for line, text in enumerate(lines):
            draw.text((column * side + 3, 2 + line * LINE_PX), text, fill="black", font=font)
        for row in range(n):
            grid.paste(_tile(batch[row], side), (column * side, header + row * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path, notes
