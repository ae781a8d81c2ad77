"""Commands of the model library: ``dataset`` and ``train``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.options import (
    DEFAULT,
    DEFAULT_UPCONV,
    BlockType,
    DropoutLayers,
    Features,
    InChannels,
    NDowns,
    OutChannels,
    Quiet,
    Upconv,
    variant,
    with_flags,
)
from cli.progress import ProgressBar, stderr
from nectargan.data.samples import TASKS
from nectargan.errors import NectarGANError
from nectargan.train.config import PRECISIONS, TrainConfig

DatasetTask = StrEnum("DatasetTask", {name: name for name in TASKS})
PrecisionChoice = StrEnum("PrecisionChoice", {name: name for name in PRECISIONS})
D = TrainConfig  # the owner of every training default, shown in the help texts below


def dataset(
    task: Annotated[DatasetTask, typer.Option(help="What A is: edges, greyscale or a noisy photo.")],
    out: Annotated[Path, typer.Option(help="Folder to create (train/, val/, test/).")],
    size: Annotated[int, typer.Option(help="Side of each image, 32..512.")] = 64,
    count: Annotated[int, typer.Option(help="Number of pairs, split 80/10/10.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
) -> None:
    """Build a pix2pix-format dataset from the colour photos installed with scikit-image and matplotlib (no download).

    Example: nectargan-bench dataset --task denoise --out data/denoise64 --size 64 --count 400
    """
    from nectargan.data.samples import build_sample_dataset

    counts = build_sample_dataset(out, task.value, size=size, count=count, seed=seed)
    stderr.print(f"Wrote {sum(counts.values())} pairs ({size}x{size} each side) to {out}: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False, soft_wrap=True)


def _flag(kind: Any, text: str) -> tuple[Any, None]:
    return Annotated[kind | None, typer.Option(help=text)], None


# The training settings as flags (None: TrainConfig's default, shown in the help).
TRAIN_FLAGS: dict[str, tuple[Any, Any]] = {
    "steps": _flag(int, "Budget in steps."),
    "seconds": _flag(float, "Budget in seconds (whichever ends first)."),
    "batch_size": _flag(int, f"Images per step [default: {D.batch_size}]."),
    "lr": _flag(float, f"Adam learning rate for G and D [default: {D.lr:g}]."),
    "beta1": _flag(float, f"Adam beta1 [default: {D.beta1:g}]."),
    "lambda_l1": _flag(float, f"Weight of the L1 term [default: {D.lambda_l1:g}]."),
    "d_layers": _flag(int, f"PatchGAN n_layers (3: 34x34 patches, 4: 70x70) [default: {D.d_layers}]."),
    "d_features": _flag(int, f"PatchGAN base channels [default: {D.d_features}]."),
    "direction": _flag(str, f"AtoB (input = left half) or BtoA [default: {D.direction}]."),
    "eval_every": _flag(int, f"Evaluate on val every N steps, 0: at the end only [default: {D.eval_every}]."),
    "log_every": _flag(int, f"Read the losses every N steps [default: {D.log_every}]."),
    "seed": _flag(int, f"Random seed [default: {D.seed}]."),
    "device": _flag(str, "auto, cpu, cuda or cuda:N [default: auto]."),
    "precision": _flag(PrecisionChoice, "auto: bf16 on a GPU that has it, else fp32 [default: auto]."),
    "channels_last": _flag(bool, "channels_last memory format (default: on for CUDA)."),
    "compile": _flag(bool, "torch.compile the step (default: on for CUDA)."),
    "preload": _flag(bool, "Hold the data on the device (default: if it fits)."),
}


@with_flags(chosen=TRAIN_FLAGS)
def train(
    data: Annotated[Path, typer.Option(help="pix2pix-format dataset folder (train/, val/).")],
    out: Annotated[Path, typer.Option(help="Run folder: metrics.csv, samples/, netG/netD.pth.tar.")],
    n_downs: NDowns = DEFAULT.n_downs,
    features: Features = DEFAULT.features,
    block_type: BlockType = DEFAULT.block_type,
    upconv_type: Upconv = DEFAULT_UPCONV,
    input_size: Annotated[int, typer.Option(help="Crop side in pixels (the generator's input_size).")] = (
        DEFAULT.input_size
    ),
    in_channels: InChannels = DEFAULT.in_channels,
    out_channels: OutChannels = None,
    use_dropout_layers: DropoutLayers = DEFAULT.use_dropout_layers,
    quiet: Quiet = False,
    chosen: dict | None = None,
) -> None:
    """Train a generator against a PatchGAN discriminator (pix2pix objective) and evaluate it.

    Give a budget: --steps and/or --seconds (whichever ends first).

    Example: nectargan-bench train --data data/denoise64 --input-size 64 --n-downs 3 --steps 500 --out runs/t64
    """
    from nectargan.train import fit

    chosen = dict(chosen or {})
    if "steps" not in chosen and "seconds" not in chosen:
        raise NectarGANError("give a budget: --steps N and/or --seconds S")
    spec = variant(n_downs, features, block_type, upconv_type, input_size, in_channels, out_channels,
                   use_dropout_layers)
    if "precision" in chosen:
        chosen["precision"] = chosen["precision"].value
    config = TrainConfig(data=str(data), out=str(out), generator=spec.model_kwargs(), **chosen)
    progress = _TrainProgress(config, quiet)
    try:
        summary = fit(config, callbacks=[progress])
    except KeyboardInterrupt as exc:
        progress.bar.stop()
        stderr.print(_interrupted(exc, out, chosen.get("steps")), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        progress.bar.stop()
    stderr.print(
        f"{summary['steps']} steps in {summary['train_seconds']:.1f} s ({summary['img_per_s']:.1f} img/s, "
        f"{summary['device']}, {summary['precision']}, compile={'on' if summary['compile'] else 'off'}); "
        f"val L1 {summary['initial_val_l1']:.4f} -> {summary['val_l1']:.4f}, PSNR {summary['val_psnr']:.2f} dB, "
        f"SSIM {summary['val_ssim']:.3f}; {_floor_clause(summary)}. Wrote {out}", highlight=False, soft_wrap=True,
    )


def _floor_clause(summary: dict) -> str:
    """``floor: copy input 20.10 dB, mean target 14.20 dB; beat by +3.40 dB`` (or ``...; did not learn: ...``)."""
    from nectargan.data.floor import Floor

    floor = Floor.from_dict(summary.get("floor"))
    if floor is None:
        return "no floor"
    return f"floor: {floor.describe()}; {floor.verdict(summary.get('val_psnr'))}"


def _interrupted(exc: KeyboardInterrupt, out: Path, steps: int | None) -> str:
    """The one line after Ctrl-C: what was kept, and that a new run needs a new --out."""
    from nectargan.train import TrainingInterrupted

    if not isinstance(exc, TrainingInterrupted):
        if (out / "metrics.csv").exists():
            return f"Interrupted. {out} holds a partial run; to train again, use a new --out"
        return f"Interrupted before training started; nothing was written to {out}"
    if exc.step == 0:
        return (f"Interrupted before the first step; nothing was kept in {out}. Run the same command again to "
                "start over")
    of = f" of {steps}" if steps is not None else ""
    return (f"Interrupted at step {exc.step}{of}. Kept {', '.join(exc.kept)} in {out} (summary.json says "
            "interrupted). Training does not resume: to train again, use a new --out")


class _TrainProgress:
    """Training events -> the progress bar (img/s, losses, val L1, ETA)."""

    def __init__(self, config: TrainConfig, quiet: bool):
        self.by_steps = config.steps is not None
        self.total = config.steps if self.by_steps else config.seconds
        self.bar = ProgressBar("train", quiet=quiet, counts=False)
        self.val = ""

    def on_eval(self, record: dict) -> None:
        self.bar.start(self.total)
        self.val = f" val L1 {record['val_l1']:.4f}"
        self.bar.update(status=f"step {record['step']}{self.val}")

    def on_log(self, record: dict) -> None:
        self.bar.start(self.total)
        status = (f"step {record['step']} {record['img_per_s']:.1f} img/s D {record['loss_d']:.3f} "
                  f"G {record['loss_g_gan']:.3f} L1 {record['loss_g_l1']:.3f}{self.val}")
        self.bar.update(completed=record["step"] if self.by_steps else record["elapsed_s"], status=status)

    def on_end(self, summary: dict) -> None:
        self.bar.update(completed=self.total)


COMMANDS = {"dataset": dataset, "train": train}
