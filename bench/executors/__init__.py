"""Where the work runs: ``local`` (this machine, as always), ``slurm`` (through submitit) or ``ray``.

One small interface serves sweeps and studies. :class:`~bench.executors.config.ExecutorConfig` holds
the settings (:mod:`bench.executors.config`), read from an ``[executor]`` table (grid or study config)
with the command's flags on top, and checked before anything is written or submitted. Each engine
lives in its own module, imported only when chosen (:func:`engine`), so the core install needs neither
submitit nor Ray:

* :mod:`bench.executors.slurm`: a sweep is one job array, one array task per shard, each measuring
  on its own GPU into its own shard folder; the driver waits (or detaches), resubmits failed and
  preempted tasks, and merges the shards exactly as ``report`` does. A study is K worker jobs.
* :mod:`bench.executors.ray`: a sweep is one Ray task per variant (``num_gpus`` each,
  ``max_retries`` for a lost worker or node); rows stream back to the driver, the only writer of
  ``results.jsonl``. A study is K worker tasks.

Study workers of every engine share one Optuna storage that every node reaches (PostgreSQL, or a
journal file on a shared path): :func:`studies.storage.check_cluster_storage`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from bench.executors.config import (
    DEFAULT_MAX_SHARDS,
    ENGINE_KEYS,
    EXECUTOR_KEYS,
    EXTRAS,
    LOGS_DIR,
    ExecutorConfig,
    ExecutorError,
    executor_config,
)
from nectargan.runtime import Device

__all__ = ["DEFAULT_MAX_SHARDS", "EXECUTOR_KEYS", "LOGS_DIR", "ExecutorConfig", "ExecutorError", "Outcome",
           "check_gpus", "engine", "executor_config", "here", "last_line", "remote_device"]

@dataclass
class Outcome:
    """What became of one call an engine ran: its result, or why it failed after every attempt."""

    index: int
    result: Any = None
    reason: str | None = None  # None: it succeeded
    job_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None


def engine(kind: str) -> ModuleType:
    """The engine module of ``kind``, imported now; a missing extra is one line saying what to install."""
    if kind not in ENGINE_KEYS:
        raise ExecutorError(f"executor {kind!r} has no engine module; use {', '.join(ENGINE_KEYS)}")
    module, extra = EXTRAS[kind]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ExecutorError(f"executor {kind!r} needs {module}, which is not installed: "
                            f"pip install 'nectargan-bench[{extra}]'") from None
    return importlib.import_module(f"bench.executors.{kind}")


def remote_device(device: str, kind: str) -> str:
    """The device a remote task measures on, as it names it: each task gets its own GPU as ``cuda:0``.

    ``cuda:N`` and ``cuda:all`` name GPUs of this machine and mean nothing on a cluster node.
    """
    parsed = Device.parse(device)
    if parsed.kind == "cpu":
        return "cpu"
    if parsed.cuda and not parsed.all and not parsed.index:
        return "cuda:0"
    if parsed.kind == "auto":
        raise ExecutorError(f"device 'auto' is decided on each node; with executor {kind!r} name it: cuda (one "
                            "GPU per task) or cpu")
    raise ExecutorError(f"device {device!r} names GPUs of this machine; with executor {kind!r} each task gets its "
                        "own GPUs: use device cuda (or cpu)")


def check_gpus(config: ExecutorConfig, device: str) -> int:
    """GPUs per task for ``device`` ("cpu" or "cuda"); a CUDA run with none is refused up front."""
    gpus = config.gpus(device)
    if Device.parse(device).cuda and gpus == 0:
        raise ExecutorError(f"device {device!r} with gpus_per_task = 0: each task would find no GPU; use "
                            "gpus_per_task >= 1, or device cpu")
    return gpus


def last_line(error: BaseException | str) -> str:
    """The last meaningful line of an error whose text carries a remote traceback (submitit, Ray)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    fallback = type(error).__name__ if isinstance(error, BaseException) else ""
    return (lines[-1] if lines else fallback)[:300]


def here() -> dict[str, str | None]:
    """Where a task ran: host, process and the GPUs the scheduler gave it (recorded with its results)."""
    import socket

    return {"node": socket.gethostname(), "pid": str(os.getpid()),
            "visible_gpus": Device.visible()}
