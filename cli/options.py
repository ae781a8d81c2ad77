"""Options shared by several commands: the variant's architecture, and the invocation itself.

Defaults come from their owners (:class:`~bench.variant.VariantSpec` for the architecture), so a
default is written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import typer

from bench.variant import VariantSpec
from nectargan.errors import NectarGANError
from nectargan.models.unet.blocks import UPCONV_TYPES


@dataclass
class Invocation:
    """The command line as typed (recorded in a run's env.json)."""

    command: str | None = None


INVOCATION = Invocation()

UpconvChoice = StrEnum("UpconvChoice", {name: name for name in UPCONV_TYPES})

NDowns = Annotated[int, typer.Option(help="Down layers between initial_down and the bottleneck.")]
Features = Annotated[int, typer.Option(help="Channels of the first layer (cap 8x).")]
BlockType = Annotated[str, typer.Option(help="Block name: UnetBlock, ResidualUnetBlock or a registered one.")]
Upconv = Annotated[UpconvChoice, typer.Option(help="Upsampling.")]
InputSize = Annotated[int, typer.Option(help="Square input side in pixels.")]
InChannels = Annotated[int, typer.Option(help="Input image channels.")]
OutChannels = Annotated[int | None, typer.Option(help="Output image channels (default: in-channels).")]
DropoutLayers = Annotated[int, typer.Option(help="Up layers with dropout, deepest first.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar; one line at the end.")]

DEFAULT = VariantSpec()
DEFAULT_UPCONV = UpconvChoice(DEFAULT.upconv_type)


def variant(n_downs: int, features: int, block_type: str, upconv_type: UpconvChoice | str, input_size: int,
            in_channels: int, out_channels: int | None, use_dropout_layers: int) -> VariantSpec:
    """The variant the options describe; one the model rejects is an error with the model's message."""
    spec = VariantSpec(
        n_downs=n_downs, features=features, block_type=block_type, upconv_type=str(getattr(upconv_type, "value",
                                                                                             upconv_type)),
        input_size=input_size, in_channels=in_channels, out_channels=out_channels,
        use_dropout_layers=use_dropout_layers,
    )
    reason = spec.invalid_reason()
    if reason is not None:
        raise NectarGANError(reason)
    return spec


# Where the work runs (bench.executors): the config's [executor] table, these flags on top.
Executor = Annotated[str | None, typer.Option(
    "--executor", help="local (this machine), slurm (submitit, from a login node) or ray (default: the config's "
    "[executor].kind, else local).")]
Address = Annotated[str | None, typer.Option(help="Ray: the cluster's address (auto: the one 'ray start' runs here).")]
Partition = Annotated[str | None, typer.Option(help="Slurm: partition.")]
Account = Annotated[str | None, typer.Option(help="Slurm: account.")]
TimeMin = Annotated[int | None, typer.Option(help="Slurm: time limit of each job in minutes (default 60).")]
MemGb = Annotated[float | None, typer.Option(help="Slurm: memory of each job in GB.")]
GpusPerTask = Annotated[int | None, typer.Option(
    help="GPUs of each job or task (default: 1 for a CUDA device, else 0).")]
CpusPerTask = Annotated[int | None, typer.Option(help="CPU cores of each job or task.")]
ArrayParallelism = Annotated[int | None, typer.Option(help="Slurm: array tasks running at once.")]
Sbatch = Annotated[list[str] | None, typer.Option(
    help="Slurm: an extra sbatch option such as --sbatch=--constraint=h100; repeat the option.")]
MaxRetries = Annotated[int | None, typer.Option(
    help="Runs again of a failed or lost job/task (default 2); finished rows and trials are kept.")]
Detach = Annotated[bool, typer.Option(
    "--detach", help="Slurm: return once the jobs are submitted (then: nectargan-bench collect DIR).")]


def executor_settings(table: dict | None, source: str, kind: str | None, **flags):
    """The executor: ``table`` (a config's [executor]) with the flags given on top, checked."""
    from bench.executors import executor_config

    return executor_config(table, source, kind=kind, **flags)
