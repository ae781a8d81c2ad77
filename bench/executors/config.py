"""Executor settings: where the work runs and how (``[executor]`` of a grid or study config, flags on top).

:class:`ExecutorConfig` is the one list of settings; :func:`executor_config` reads a table, puts the
command's flags on top and checks every value before anything is written or submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from bench.tomlfile import number
from nectargan.errors import NectarGANError, did_you_mean
from nectargan.runtime import Device

EXECUTORS = ("local", "slurm", "ray")
COMMON_KEYS = ("kind", "max_retries", "gpus_per_task", "cpus_per_task")
SLURM_KEYS = ("shards", "partition", "time_min", "mem_gb", "account", "array_parallelism", "sbatch", "cluster",
              "detach")
RAY_KEYS = ("address",)
EXECUTOR_KEYS = (*COMMON_KEYS, *SLURM_KEYS, *RAY_KEYS)
ENGINE_KEYS = {"slurm": SLURM_KEYS, "ray": RAY_KEYS}
LOGS_DIR = "submitit"  # submitit's job logs, inside a sweep's run folder or a study's trial folder
SUBMITIT_CLUSTERS = ("slurm", "local")  # local: the same jobs as processes here, to try the path out
EXTRAS = {"slurm": ("submitit", "slurm"), "ray": ("ray", "ray")}  # kind -> (module, pip extra)
DEFAULT_MAX_SHARDS = 16


class ExecutorError(NectarGANError, ValueError):
    """Executor settings that cannot be used."""


@dataclass(frozen=True)
class ExecutorConfig:
    """How and where work runs (see the module docstring); the defaults are today's local run."""

    kind: str = "local"
    max_retries: int = 2  # a failed or lost task is run again this many times (its finished rows are kept)
    gpus_per_task: int | None = None  # None: 1 when the device is CUDA, else 0
    cpus_per_task: int | None = None
    # Slurm (submitit)
    shards: int | None = None  # array tasks of a sweep (default: one per variant, at most DEFAULT_MAX_SHARDS)
    partition: str | None = None
    time_min: int = 60
    mem_gb: float | None = None
    account: str | None = None
    array_parallelism: int | None = None
    sbatch: tuple[str, ...] = ()  # extra sbatch options, "--constraint=h100"
    cluster: str = "slurm"
    detach: bool = False
    # Ray
    address: str | None = None  # None: RAY_ADDRESS, else a new local Ray instance

    @property
    def remote(self) -> bool:
        return self.kind != "local"

    def gpus(self, device: str) -> int:
        """GPUs each task asks for: the setting, else one for a CUDA device and none for the CPU."""
        if self.gpus_per_task is not None:
            return self.gpus_per_task
        return 1 if Device.parse(device).cuda else 0

    def sbatch_parameters(self) -> dict[str, Any]:
        """``--name=value`` / ``--flag`` -> submitit's ``slurm_additional_parameters``."""
        out: dict[str, Any] = {}
        for line in self.sbatch:
            name, eq, value = line.removeprefix("#SBATCH").strip().removeprefix("--").partition("=")
            out[name.replace("-", "_")] = value if eq else True
        return out

    def describe(self) -> dict[str, Any]:
        """The settings that apply to this kind (for env.json and messages)."""
        keep = set(COMMON_KEYS) | set(ENGINE_KEYS.get(self.kind, ()))
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in keep}


def _check_value(key: str, value: Any, where: str) -> Any:
    if key == "kind":
        if value not in EXECUTORS:
            raise ExecutorError(f"{where} {value!r} is not valid{did_you_mean(str(value), EXECUTORS)}; "
                                f"use {', '.join(EXECUTORS)}")
        return value
    if key == "cluster":
        if value not in SUBMITIT_CLUSTERS:
            raise ExecutorError(f"{where} {value!r} is not valid; use slurm, or local to run the jobs as "
                                "processes on this machine")
        return value
    if key in ("max_retries", "gpus_per_task"):
        return number(where, value, ExecutorError, kind=int, minimum=0)
    if key in ("cpus_per_task", "shards", "time_min", "array_parallelism"):
        return number(where, value, ExecutorError, kind=int, minimum=1)
    if key == "mem_gb":
        return number(where, value, ExecutorError, above=0)
    if key == "detach":
        if not isinstance(value, bool):
            raise ExecutorError(f"{where} = {value!r} must be true or false")
        return value
    if key == "sbatch":
        lines = [value] if isinstance(value, str) else value
        if not isinstance(lines, list | tuple) or not all(isinstance(x, str) for x in lines):
            raise ExecutorError(f"{where} must be a list of sbatch options, e.g. [\"--constraint=h100\"]")
        for line in lines:
            option = line.removeprefix("#SBATCH").strip()
            if not option.startswith("--") or option == "--" or " " in option.partition("=")[0]:
                raise ExecutorError(f"{where}: {line!r} is not an sbatch option; write it as --name=value "
                                    "(e.g. --constraint=h100, --qos=high)")
        return tuple(lines)
    if not isinstance(value, str) or not value.strip():  # partition, account, address
        raise ExecutorError(f"{where} = {value!r} must be a non-empty string")
    return value


def executor_config(table: dict[str, Any] | None = None, source: str = "<flags>", table_only: bool = False,
                    **flags: Any) -> ExecutorConfig:
    """Settings from a config file's ``[executor]`` table with explicit ``flags`` (None: not given) on top.

    Every value is checked; a setting that belongs to another engine than the chosen one is an error
    naming both, e.g. ``address`` (Ray) with kind ``slurm``. A table without ``kind`` may hold one
    engine's settings for a flag to choose it (``--executor slurm``); the table settings of another
    engine are dropped when a flag changes the table's kind (a grid made for Slurm still runs with
    ``--executor local``). ``table_only``: check the table alone, as a config file is loaded.
    """
    table = dict(table or {})
    for key in table:
        if key not in EXECUTOR_KEYS:
            raise ExecutorError(f"{source}: unknown key [executor].{key}{did_you_mean(key, EXECUTOR_KEYS)}; "
                                f"valid keys: {', '.join(EXECUTOR_KEYS)}")
    values = {k: _check_value(k, v, f"{source}: [executor].{k}") for k, v in table.items()}
    table_kind = values.get("kind")
    if table_kind is not None:
        _check_engine(values, table_kind, lambda k: f"{source}: [executor].{k}")
    if table_only:
        return ExecutorConfig(**values) if table_kind is not None else ExecutorConfig()
    given = {k: v for k, v in flags.items() if v is not None and v != () and v != []}
    for key in given:
        if key not in EXECUTOR_KEYS:
            raise ExecutorError(f"unknown executor setting {key!r}; valid: {', '.join(EXECUTOR_KEYS)}")
    given = {k: _check_value(k, v, f"executor setting {k}") for k, v in given.items()}
    kind = given.get("kind", table_kind or "local")
    _check_engine({k: v for k, v in given.items() if not (k == "detach" and v is False)}, kind,
                  lambda k: f"executor setting {k}")
    if table_kind is not None and kind != table_kind:  # the flag changed the kind: the table's engine settings go
        values = {k: v for k, v in values.items() if k in COMMON_KEYS}
    _check_engine(values, kind, lambda k: f"{source}: [executor].{k}")
    return ExecutorConfig(**(values | given | {"kind": kind}))


def _check_engine(values: dict[str, Any], kind: str, name) -> None:
    for engine, keys in ENGINE_KEYS.items():
        for key in keys:
            if key in values and engine != kind:
                raise ExecutorError(f"{name(key)} is a {engine} setting, but the executor is {kind!r}; "
                                    f"set executor {engine!r} or drop {key}")
