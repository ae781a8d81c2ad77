"""What a remote engine runs for a sweep, engine-neutral: shard folders, shard calls, and merging.

A sweep sent to a cluster lives in one run folder::

    DIR/executor.json          the executor's settings, the shards and their job ids (for ``collect``)
    DIR/shards/shard1of4/      one ordinary run folder per shard (env.json, results.jsonl), each
    ...                        written by its own task on its own node; a retried task resumes it
    DIR/results.jsonl, report.md, results.csv, plots: the shards merged, exactly as ``report`` does

The calls are plain picklable objects: submitit and Ray pickle them to the nodes, which import this
package from the same installation (a shared file system or the same image).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import ENV_FILE, write_json_atomic
from bench.executors import DEFAULT_MAX_SHARDS, ExecutorConfig, here
from bench.grid import Grid
from bench.measure import MeasureOptions, plan_for
from bench.rundir import CLUSTER_STATE
from bench.store import JsonlStore
from bench.sweep import ShardState, SweepPlan, run_plan, select_variants
from nectargan.errors import NectarGANError

STATE_FILE = CLUSTER_STATE
SHARDS_DIR = "shards"


def shard_folder(directory: Path, index: int, count: int) -> Path:
    return directory / SHARDS_DIR / f"shard{index}of{count}"


def enter(cwd: str | None) -> None:
    """Work where the command was typed: the run's relative paths (data, trial folders) then mean the
    same on every node. A node without that folder has no shared file system with the driver."""
    if cwd is None:
        return
    if not os.path.isdir(cwd):
        import socket

        raise NectarGANError(f"node {socket.gethostname()} does not see {cwd}, the folder the command ran in: the "
                             "nodes need a file system shared with it (the run folder, data and configs)")
    os.chdir(cwd)


@dataclass(frozen=True)
class SweepShard:
    """One shard of a sweep into its own folder; calling it again resumes it (retry, preemption)."""

    grid: Grid
    folder: str  # absolute
    index: int
    count: int
    options: MeasureOptions | None  # None: static only
    command: str | None = None
    cwd: str | None = None

    def __call__(self) -> dict[str, Any]:
        enter(self.cwd)
        folder = Path(self.folder)
        resume = JsonlStore(folder).exists() or (folder / ENV_FILE).is_file()
        result = run_plan(self.grid, folder, plan_for(self.options), resume=resume,
                          shard_spec=(self.index, self.count), command=self.command)
        return {"shard": f"{self.index}/{self.count}", "rows": result.counts, "skipped": result.skipped, **here()}


def shard_states(grid: Grid, directory: Path, count: int, keys_plan: SweepPlan) -> list[ShardState]:
    """How far each shard folder has got, from its results (readable while the tasks still run)."""
    variants = select_variants(grid, None)
    states = []
    for index in range(1, count + 1):
        part = select_variants(grid, (index, count))
        folder = shard_folder(directory, index, count)
        done = JsonlStore(folder).keys() if JsonlStore(folder).path.is_file() else set()
        states.append(ShardState(index, folder, len(part), sum(keys_plan.keys(s) <= done for s in part)))
    assert sum(s.variants for s in states) == len(variants)
    return states


def shard_count(grid: Grid, config: ExecutorConfig) -> int:
    """The shards of a sweep: the setting, else one per variant up to 16; more than variants is an error."""
    variants = len(select_variants(grid, None))
    if config.shards is None:
        return min(variants, DEFAULT_MAX_SHARDS)
    if config.shards > variants:
        raise NectarGANError(f"executor setting shards={config.shards} is more than the grid's {variants} "
                             f"variant(s); use at most {variants}")
    return config.shards


def write_state(directory: Path, state: dict[str, Any]) -> None:
    write_json_atomic(directory / STATE_FILE, state)


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise NectarGANError(f"{directory} holds no {STATE_FILE}: it is not a sweep sent to Slurm (a local or "
                             "Ray run folder holds its rows itself: resume it with --resume, or rewrite its reports "
                             "with nectargan-bench report DIR)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NectarGANError(f"{path} cannot be read: {exc}") from None


def merge_shards(directory: Path, states: list[ShardState], extra_env: dict[str, Any]) -> list[Path]:
    """Merge the shard folders that have results into ``directory`` (replacing an earlier merge), as
    ``report`` merges folders; returns the files written. The caller holds the folder's
    :class:`~bench.rundir.RunLock`."""
    from bench.report import report_dirs

    folders = [s.folder for s in states if JsonlStore(s.folder).path.is_file()]
    if not folders:
        return []
    _out, written = report_dirs(folders, directory, replace=True, extra_env=extra_env)
    return written
