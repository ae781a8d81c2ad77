"""A sweep's run folder: its lock, and the checks that keep a resumed run one run.

One set of checks for every executor: a folder is started once (``resume`` continues it), with one
grid file (its SHA-256), one shard, and the measure options that shape its figures. A local or Ray run
records them in ``env.json``; a sweep sent to Slurm in ``executor.json`` (its shards are ordinary run
folders below it). Every refusal is one line saying what to do instead.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.env import ENV_FILE, collect_env, read_env, write_json_atomic
from bench.grid import Grid
from bench.store import RESULTS_FILE, JsonlStore
from nectargan.errors import NectarGANError

LOCK_FILE = ".lock"
CLUSTER_STATE = "executor.json"  # a sweep sent to Slurm (bench.executors.slurm): its folder holds shards
# Measure options that shape every figure of a row (timing, threads, oneDNN): a resumed run must keep them, or
# its rows would be reported beside the earlier ones as alike. What is measured (tasks, modes, precisions,
# layouts: rows of their own, and the report says which pairs were not timed together) and how long to wait
# for a child may change. A Slurm sweep keeps every option: its shard folders and row keys depend on them.
FIGURE_OPTIONS = ("threads", "blocks", "min_block_s", "cpu_mkldnn", "warm_compile", "max_batch")


class RunLock:
    """An exclusive lock on a run folder (``flock`` on ``DIR/.lock``), held for a whole sweep.

    The kernel drops it when the holder exits, even by SIGKILL, so a killed sweep never leaves a stale
    lock; the file itself stays (it holds the last holder's PID). A context manager; ``release`` is
    idempotent.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 32).decode(errors="replace").strip()
            self.release()
            pid = f" (PID {holder})" if holder.isdigit() else ""
            raise NectarGANError(
                f"{directory} is in use by another sweep{pid}; wait for it to finish, or choose another output "
                "folder"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class StartedRun:
    """What a run folder was started with (None: not recorded)."""

    grid: str | None
    grid_sha256: str | None
    shard: str | None
    measure: dict[str, Any] | None


def check_folder(directory: Path, resume: bool, on_slurm: bool) -> None:
    """Before the lock: the folder can hold this run (a local/Ray one, or one sent to Slurm when ``on_slurm``).
    (Whether it already holds one is checked under the lock, :func:`check_fresh`: a busy folder says so.)"""
    if directory.exists() and not directory.is_dir():
        raise NectarGANError(f"output folder {directory} exists and is not a folder")
    sent = (directory / CLUSTER_STATE).is_file()
    local = JsonlStore(directory).exists() or (directory / ENV_FILE).is_file()
    if sent and not on_slurm:
        raise NectarGANError(f"{directory} is a sweep sent to Slurm (it holds {CLUSTER_STATE}): resume it with "
                             "--executor slurm, or merge what its shards wrote with nectargan-bench collect")
    if on_slurm and local and not sent:
        raise NectarGANError(f"{directory} is a sweep run here (it holds {RESULTS_FILE} but no {CLUSTER_STATE}): "
                             "resume it without --executor slurm, or choose another output folder")
    if resume and not (sent or local):
        what = "does not exist" if not directory.exists() else f"holds no sweep (no {RESULTS_FILE} or {ENV_FILE})"
        raise NectarGANError(f"nothing to resume in {directory}: it {what}; start a new run there instead "
                             "(without resume)")


def check_fresh(directory: Path, resume: bool, on_slurm: bool) -> None:
    """Under the lock: a new run (not ``resume``) starts in a folder that holds no run yet."""
    if resume:
        return
    if (directory / CLUSTER_STATE).is_file() or JsonlStore(directory).exists():
        raise NectarGANError(f"{directory} already holds results; resume that run (--resume) or choose another "
                             "output folder")
    if on_slurm and directory.is_dir() and any(p.name != LOCK_FILE for p in directory.iterdir()):
        raise NectarGANError(f"{directory} is not empty; resume that run (--resume) or choose another output folder "
                             "(a sweep sent to Slurm starts in an empty one: its shards go below it)")


def check_same_run(directory: Path, started: StartedRun, grid: Grid, shard: str | None,
                   measure: dict[str, Any] | None, keys: tuple[str, ...] | None = FIGURE_OPTIONS) -> None:
    """A resumed run keeps its grid, shard and the measure options in ``keys`` (None: every option, and
    static stays static)."""
    if started.grid_sha256 is not None and started.grid_sha256 != grid.sha256:
        raise NectarGANError(
            f"{directory} was started with grid {started.grid} (sha256 {started.grid_sha256[:12]}), not {grid.source} "
            f"(sha256 {grid.sha256[:12]}); resume with the same grid file or choose another output folder")
    if started.shard != shard:
        raise NectarGANError(f"{directory} was started with shard {started.shard or '(none)'}, not "
                             f"{shard or '(none)'}; resume with the same shard or choose another output folder")
    if keys is None and (started.measure is None) != (measure is None):
        how = "static only" if started.measure is None else "measured"
        raise NectarGANError(f"{directory} was started {how}; resume it the same way (with or without --static-only "
                             "as then)")
    if started.measure is None or measure is None:
        return
    for key in keys or tuple(started.measure):
        if key in started.measure and started.measure[key] != measure.get(key):
            raise NectarGANError(
                f"{directory} was measured with {key}={started.measure[key]!r}, not {measure.get(key)!r}: its rows and "
                f"the new ones would not be comparable; resume with {key}={started.measure[key]!r} or choose another "
                "output folder")


def prepare_run_dir(
    directory: Path, grid: Grid, resume: bool, shard_spec: tuple[int, int] | None, command: str | None = None,
    measure: dict[str, Any] | None = None,
) -> RunLock:
    """Lock a local (or Ray) run folder, refuse to mix runs by accident, write or extend env.json.

    ``measure``: the measure options of this run (None: static), checked against the resumed run's.
    Returns the held lock: the caller keeps it for the whole run (``with prepare_run_dir(...):``).
    """
    check_folder(directory, resume, on_slurm=False)
    lock = RunLock(directory)
    try:
        check_fresh(directory, resume, on_slurm=False)
        _check_and_record(directory, grid, resume, shard_spec, command, measure)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_and_record(directory: Path, grid: Grid, resume: bool, shard_spec: tuple[int, int] | None,
                      command: str | None, measure: dict[str, Any] | None) -> None:
    env = read_env(directory)
    now = collect_env(grid.source, grid.sha256, command)
    now["shard"] = f"{shard_spec[0]}/{shard_spec[1]}" if shard_spec else None
    if env is not None and resume and JsonlStore(directory).exists():
        started = StartedRun(env.get("grid"), env.get("grid_sha256"), env.get("shard"), env.get("measure"))
        check_same_run(directory, started, grid, now["shard"], measure)
    if env is None:
        write_json_atomic(directory / ENV_FILE, now)
        return
    env.setdefault("resumes", []).append(
        {k: now[k] for k in ("started_at", "command", "grid_sha256", "shard", "host")}
    )
    write_json_atomic(directory / ENV_FILE, env)
