"""Run a grid: one driver for static and measured sweeps, resumable and shardable.

:func:`run_sweep` selects the variants (a shard of them), prepares the run folder, skips variants
whose rows are all in the store, and hands each remaining variant to a *plan* on one worker per
device: :class:`StaticPlan` profiles it (one ``static`` row); the measured plan
(:class:`bench.measure.MeasuredPlan`) adds its timed rows. Rows are appended as they are made: a measured
plan hands over each group of configurations as the child reports it, so a killed sweep keeps them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.env import ENV_FILE, collect_env, read_env, write_json_atomic
from bench.grid import Grid, shard
from bench.profile import profile_static
from bench.store import RESULTS_FILE, SCHEMA_VERSION, JsonlStore, Row, new_run_dir
from bench.variant import VariantSpec
from nectargan.errors import NectarGANError

STATIC_KIND = "static"
LOCK_FILE = ".lock"
CLUSTER_STATE = "executor.json"  # a sweep sent to Slurm (bench.executors.slurm): its folder holds shards
EmitRows = Callable[[list[Row]], None]


def static_key(spec: VariantSpec) -> str:
    return f"{STATIC_KIND}|{spec.key}"


def base_row(kind: str, key: str, spec: VariantSpec) -> Row:
    """The columns every row of a variant starts with: schema, kind, key, the variant's fields."""
    return {
        "schema": SCHEMA_VERSION, "kind": kind, "key": key, "variant": spec.name, **spec.to_dict(),
        "out_channels": spec.out_channels if spec.out_channels is not None else spec.in_channels,
    }


def static_row(spec: VariantSpec) -> Row:
    """Profile one variant into a row; an invalid or failing variant becomes a row too."""
    row = base_row(STATIC_KIND, static_key(spec), spec)
    reason = spec.invalid_reason()
    if reason is not None:
        return row | {"status": "invalid", "reason": reason}
    start = time.perf_counter()
    try:
        profile = profile_static(spec)
    except Exception as exc:  # a user's block may fail in any way; the sweep goes on
        message = " ".join(str(exc).split())[:500]
        return row | {"status": "error", "reason": f"{type(exc).__name__}: {message}"}
    return row | {
        "status": "ok",
        "reason": "",
        **profile.to_dict(),
        "profile_s": time.perf_counter() - start,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


class SweepPlan(Protocol):
    """What a sweep does with each variant."""

    def devices(self) -> list[str]:
        """One worker per device; checked before the run folder is touched."""
        ...

    def keys(self, spec: VariantSpec) -> set[str]:
        """The keys of every row a finished variant has (resume skips the variant when all exist)."""
        ...

    def start(self, directory: Path, store: JsonlStore) -> None:
        """Once, before the first variant (e.g. the matmul ceiling into env.json)."""
        ...

    def rows(self, spec: VariantSpec, device: str, done: set[str], store: JsonlStore,
             emit: EmitRows | None = None) -> list[Row]:
        """The variant's rows that are not ``done`` yet. A plan may hand rows to ``emit`` as they are
        made (they reach disk at once); it returns them all the same, and none is written twice."""
        ...

    def finish(self) -> None:
        """Once, after the last variant or an interruption (stop measuring processes)."""
        ...

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], status: str, reason: str) -> list[Row]:
        """Rows that say the variant's missing rows could not be made at all (a lost remote task)."""
        ...


class StaticPlan:
    """Count parameters, FLOPs and activations: one ``static`` row per variant, no timing."""

    def devices(self) -> list[str]:
        return ["cpu"]

    def keys(self, spec: VariantSpec) -> set[str]:
        return {static_key(spec)}

    def start(self, directory: Path, store: JsonlStore) -> None:
        return None

    def rows(self, spec: VariantSpec, device: str, done: set[str], store: JsonlStore,
             emit: EmitRows | None = None) -> list[Row]:
        return [static_row(spec)]

    def finish(self) -> None:
        return None

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], status: str, reason: str) -> list[Row]:
        return [] if static_key(spec) in done else [base_row(STATIC_KIND, static_key(spec), spec)
                                                     | {"status": status, "reason": reason}]


@dataclass
class SweepResult:
    directory: Path
    planned: int  # variants selected
    skipped: int  # variants already finished (resume)
    counts: dict[str, int] = field(default_factory=dict)  # rows written, by status


def default_out_dir(grid: Grid, shard_spec: tuple[int, int] | None = None) -> Path:
    """``results/runs/<grid>[-shardKofN]-<timestamp>``."""
    suffix = f"-shard{shard_spec[0]}of{shard_spec[1]}" if shard_spec else ""
    return new_run_dir(f"{grid.name}{suffix}")


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


# Measure options that shape every figure of a row (timing, threads, oneDNN): a resumed run must keep them, or
# its rows would be reported beside the earlier ones as alike. What is measured (tasks, modes, precisions,
# layouts: rows of their own, and the report says which pairs were not timed together) and how long to wait
# for a child may change.
FIGURE_OPTIONS = ("threads", "blocks", "min_block_s", "cpu_mkldnn", "warm_compile", "max_batch")


def _check_figure_options(directory: Path, stored: dict[str, Any] | None, given: dict[str, Any] | None) -> None:
    if stored is None or given is None:
        return
    for key in FIGURE_OPTIONS:
        if key in stored and stored[key] != given.get(key):
            raise NectarGANError(
                f"{directory} was measured with {key}={stored[key]!r}, not {given.get(key)!r}: its rows and the new "
                f"ones would not be comparable; resume with {key}={stored[key]!r} or choose another output folder")


def prepare_run_dir(
    directory: Path, grid: Grid, resume: bool, shard_spec: tuple[int, int] | None, command: str | None = None,
    measure: dict[str, Any] | None = None,
) -> RunLock:
    """Lock the folder (:class:`RunLock`), refuse to mix runs by accident, write or extend env.json.

    ``measure``: the measure options of this run (None: static), checked against the resumed run's.
    Returns the held lock: the caller keeps it for the whole run (``with prepare_run_dir(...):``).
    """
    if directory.exists() and not directory.is_dir():
        raise NectarGANError(f"output folder {directory} exists and is not a folder")
    if (directory / CLUSTER_STATE).is_file():
        raise NectarGANError(f"{directory} is a sweep sent to Slurm (it holds {CLUSTER_STATE}): resume it with "
                             "--executor slurm, or merge what its shards wrote with nectargan-bench collect")
    if resume and not (JsonlStore(directory).exists() or (directory / ENV_FILE).is_file()):
        what = "does not exist" if not directory.exists() else f"holds no sweep (no {RESULTS_FILE} or {ENV_FILE})"
        raise NectarGANError(f"nothing to resume in {directory}: it {what}; start a new run there instead "
                             "(without resume)")
    lock = RunLock(directory)
    try:
        _check_and_record(directory, grid, resume, shard_spec, command, measure)
    except BaseException:
        lock.release()
        raise
    return lock


def _check_and_record(
    directory: Path, grid: Grid, resume: bool, shard_spec: tuple[int, int] | None, command: str | None,
    measure: dict[str, Any] | None = None,
) -> None:
    store = JsonlStore(directory)
    if store.exists() and not resume:
        raise NectarGANError(
            f"{directory} already holds results; resume that run or choose another output folder"
        )
    env = read_env(directory)
    now = collect_env(grid.source, grid.sha256, command)
    now["shard"] = f"{shard_spec[0]}/{shard_spec[1]}" if shard_spec else None
    if env is not None and resume and store.exists():
        if env.get("grid_sha256") != grid.sha256:
            raise NectarGANError(
                f"{directory} was started with grid {env.get('grid')} (sha256 {str(env.get('grid_sha256'))[:12]}), "
                f"not {grid.source} (sha256 {grid.sha256[:12]}); resume with the same grid file or choose another "
                "output folder"
            )
        if env.get("shard") != now["shard"]:
            raise NectarGANError(
                f"{directory} was started with shard {env.get('shard') or '(none)'}, not "
                f"{now['shard'] or '(none)'}; resume with the same shard or choose another output folder"
            )
        _check_figure_options(directory, env.get("measure"), measure)
    if env is None:
        write_json_atomic(directory / ENV_FILE, now)
        return
    env.setdefault("resumes", []).append(
        {k: now[k] for k in ("started_at", "command", "grid_sha256", "shard", "host")}
    )
    write_json_atomic(directory / ENV_FILE, env)


def select_variants(grid: Grid, shard_spec: tuple[int, int] | None) -> list[VariantSpec]:
    """The grid's variants, or one shard of them; an empty selection is an error."""
    variants = grid.variants()
    if not variants:
        raise NectarGANError(f"grid {grid.source} has no variants (exclude removed every combination)")
    if shard_spec is None:
        return variants
    part = shard(variants, *shard_spec)
    if not part:
        raise NectarGANError(
            f"shard {shard_spec[0]}/{shard_spec[1]} is empty: the grid has only {len(variants)} variants"
        )
    return part


def run_sweep(
    grid: Grid,
    directory: Path,
    plan: SweepPlan,
    resume: bool = False,
    shard_spec: tuple[int, int] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_variant: Callable[[VariantSpec, list[Row]], None] | None = None,
    command: str | None = None,
) -> SweepResult:
    """Run ``plan`` on every variant of ``grid`` (or of one shard) into ``directory/results.jsonl``.

    Variants whose rows are all in the store are skipped when resuming, and a row already there is
    never written twice. ``on_variant`` sees each finished variant's rows (a progress bar).
    """
    variants = select_variants(grid, shard_spec)
    devices = plan.devices()
    options = getattr(plan, "options", None)  # a measured plan's MeasureOptions
    measure = dataclasses.asdict(options) if options is not None else None
    with prepare_run_dir(directory, grid, resume, shard_spec, command, measure):  # DIR/.lock, held until the end
        store = JsonlStore(directory)
        done = store.keys()
        try:
            return _run(variants, devices, directory, plan, store, done, on_start, on_variant)
        finally:
            plan.finish()


def _run(variants: list[VariantSpec], devices: list[str], directory: Path, plan: SweepPlan, store: JsonlStore,
         done: set[str], on_start: Callable[[int], None] | None,
         on_variant: Callable[[VariantSpec, list[Row]], None] | None) -> SweepResult:
    plan.start(directory, store)
    todo = [spec for spec in variants if not plan.keys(spec) <= done]
    result = SweepResult(directory, planned=len(variants), skipped=len(variants) - len(todo))
    if on_start:
        on_start(len(todo))
    lock = threading.Lock()
    queue = list(todo)

    def write(rows: list[Row]) -> None:
        with lock:
            for row in rows:
                if row["key"] in done:
                    continue
                store.append(row)
                done.add(row["key"])
                result.counts[row["status"]] = result.counts.get(row["status"], 0) + 1

    def worker(device: str) -> None:
        while True:
            with lock:
                if not queue:
                    return
                spec = queue.pop(0)
            rows = plan.rows(spec, device, done, store, write)
            write(rows)
            if on_variant:
                with lock:
                    on_variant(spec, rows)

    if len(devices) == 1:
        worker(devices[0])
    else:
        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devices]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return result
