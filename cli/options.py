"""Options shared by several commands: the variant's architecture, and the invocation itself.

Defaults come from their owners (:class:`~bench.variant.VariantSpec` for the architecture), so a
default is written once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Annotated, Any

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


def executor_settings(table: dict | None, source: str, kind: str | None = None, **flags):
    """The executor: ``table`` (a config's [executor]) with the flags given on top, checked."""
    from bench.executors import executor_config

    return executor_config(table, source, kind=kind, **flags)


def measure_flags() -> dict[str, tuple[Any, Any]]:
    """One flag per measure option, generated from :class:`bench.options.MeasureOptions` (its names, help
    and defaults): field name -> (annotated type, default None: "not given, the grid's or the default")."""
    from bench.options import MeasureOptions, flag_name, option_default

    flags: dict[str, tuple[Any, Any]] = {}
    for f in fields(MeasureOptions):
        info, default = f.metadata["option"], option_default(f.name)
        shown = info.default_text or (", ".join(default) if isinstance(default, list) else
                                      str(default).lower() if isinstance(default, bool) else str(default))
        text = f"{info.help} (default: the grid's [measure], else {shown})."
        name = flag_name(f.name)
        if isinstance(default, list):
            kind: Any = list[str] | None
        elif info.kind is bool:
            kind, name = bool | None, f"{name}/--no-{name[2:]}"
        else:
            kind = (info.kind or str) | None
        flags[f.name] = (Annotated[kind, typer.Option(name, help=text)], None)
    return flags


# Where the work runs, as flags (the study command lists them one by one; a sweep takes them as one group).
EXECUTOR_FLAGS: dict[str, tuple[Any, Any]] = {
    "kind": (Executor, None), "address": (Address, None), "partition": (Partition, None),
    "account": (Account, None), "time_min": (TimeMin, None), "mem_gb": (MemGb, None),
    "gpus_per_task": (GpusPerTask, None), "cpus_per_task": (CpusPerTask, None),
    "array_parallelism": (ArrayParallelism, None), "sbatch": (Sbatch, None),
    "shards": (Annotated[int | None, typer.Option(help="Slurm: array tasks, one shard each (default: one per variant, "
                                                  "at most 16).")], None),
    "max_retries": (MaxRetries, None), "detach": (Detach, False),
}


def with_flags(**groups: dict[str, tuple[Any, Any]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add each group's flags (name -> (annotated type, default)) to a command's signature, after its own
    parameters; the command receives each group as one dict argument named after the group, holding the
    flags given (a flag left out is not in it). Typer reads the signature, so ``--help`` lists every flag."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name not in groups]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
                 for flags in groups.values() for name, (kind, default) in flags.items()]

        @functools.wraps(command)
        def run(**given: Any) -> Any:
            grouped = {group: {k: v for k, (_kind, default) in flags.items()
                               if (v := given.pop(k)) is not default and not (isinstance(v, list | tuple) and not v)}
                       for group, flags in groups.items()}  # a flag given as 0 or --no-x is kept
            return command(**given, **grouped)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
