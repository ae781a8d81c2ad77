"""Run a grid: one driver for static and measured sweeps, resumable and shardable.

:func:`run_plan` selects the variants (a shard of them), prepares the run folder, skips variants
whose rows are all in the store, and hands each remaining variant to a *plan* on one worker per
device: :class:`StaticPlan` profiles it (one ``static`` row); the measured plan
(:class:`bench.measure.MeasuredPlan`) adds its timed rows. Rows are appended as they are made: a measured
plan hands over each group of configurations as the child reports it, so a killed sweep keeps them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.grid import Grid, shard
from bench.profile import profile_static
from bench.rows import AnyRow, Failure, RowKey, StaticRow, failed_row, static_columns
from bench.rundir import prepare_run_dir
from bench.store import JsonlStore, new_run_dir
from bench.variant import VariantSpec
from nectargan.errors import NectarGANError

EmitRows = Callable[[list[AnyRow]], None]


def static_key(spec: VariantSpec) -> str:
    return str(RowKey.static(spec))


def static_row(spec: VariantSpec) -> AnyRow:
    """Profile one variant into a row; an invalid or failing variant becomes a (failed) row too."""
    columns = static_columns(spec)
    reason = spec.invalid_reason()
    if reason is not None:
        return failed_row(columns, Failure("invalid", reason))
    start = time.perf_counter()
    try:
        counts = profile_static(spec)
    except Exception as exc:  # a user's block may fail in any way; the sweep goes on
        message = " ".join(str(exc).split())[:500]
        return failed_row(columns, Failure("error", f"{type(exc).__name__}: {message}"))
    return StaticRow(**columns, **dataclasses.asdict(counts), profile_s=time.perf_counter() - start,
                     finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


class SweepPlan(Protocol):
    """What a sweep does with each variant (:class:`StaticPlan`, :class:`bench.measure.MeasuredPlan`,
    :class:`bench.executors.ray.RayPlan`)."""

    def devices(self) -> list[str]:
        """The device of each worker (one worker per entry); checked before the run folder is touched."""
        ...

    def keys(self, spec: VariantSpec) -> set[str]:
        """The keys of every row a finished variant has (resume skips the variant when all exist)."""
        ...

    def start(self, directory: Path) -> None:
        """Once, before the first variant (e.g. the matmul ceiling into env.json)."""
        ...

    def rows(self, spec: VariantSpec, device: str, done: set[str], store: JsonlStore,
             emit: EmitRows | None = None) -> list[AnyRow]:
        """The variant's rows that are not ``done`` yet. A plan may hand rows to ``emit`` as they are
        made (they reach disk at once); it returns them all the same, and none is written twice."""
        ...

    def finish(self) -> None:
        """Once, after the last variant or an interruption (stop measuring processes)."""
        ...

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], failure: Failure) -> list[AnyRow]:
        """Rows that say the variant's missing rows could not be made at all (a lost remote task)."""
        ...


class StaticPlan:
    """Count parameters, FLOPs and activations: one ``static`` row per variant, no timing."""

    def devices(self) -> list[str]:
        return ["cpu"]

    def keys(self, spec: VariantSpec) -> set[str]:
        return {static_key(spec)}

    def start(self, directory: Path) -> None:
        return None

    def rows(self, spec: VariantSpec, device: str, done: set[str], store: JsonlStore,
             emit: EmitRows | None = None) -> list[AnyRow]:
        return [static_row(spec)]

    def finish(self) -> None:
        return None

    def failed_rows(self, spec: VariantSpec, device: str, done: set[str], failure: Failure) -> list[AnyRow]:
        return [] if static_key(spec) in done else [failed_row(static_columns(spec), failure)]


@dataclass
class ShardState:
    """How far one shard of a sweep sent to a cluster has got (from its folder's rows)."""

    index: int
    folder: Path
    variants: int
    finished: int  # variants whose rows are all in the shard's results

    @property
    def complete(self) -> bool:
        return self.finished == self.variants


@dataclass
class SweepResult:
    """What a sweep did, whatever executor ran it (:func:`bench.run.run_sweep`)."""

    directory: Path
    planned: int  # variants selected
    skipped: int  # variants already finished (resume)
    counts: dict[str, int] = field(default_factory=dict)  # rows written by this run, by status
    written: list[Path] = field(default_factory=list)  # reports
    shards: list[ShardState] = field(default_factory=list)  # Slurm: every shard and its progress
    submitted: int = 0  # Slurm: shards sent (the others were complete, or still running)
    failures: list[str] = field(default_factory=list)  # Slurm: shards that did not finish, and why
    detached: bool = False  # Slurm: returned once the jobs were submitted


@dataclass
class SweepProgress:
    """What a sweep tells its caller as it goes (a progress bar); every callback is optional."""

    folder: Callable[[Path], None] | None = None  # the run folder, once chosen (before anything runs)
    start: Callable[[int, int], None] | None = None  # (variants in all, variants finished already)
    variant: Callable[[VariantSpec, list[AnyRow]], None] | None = None  # a variant's rows, as it finishes
    finished: Callable[[int, str], None] | None = None  # Slurm, polled: variants finished, the engine's job states


def default_out_dir(grid: Grid, shard_spec: tuple[int, int] | None = None) -> Path:
    """``results/runs/<grid>[-shardKofN]-<timestamp>``."""
    suffix = f"-shard{shard_spec[0]}of{shard_spec[1]}" if shard_spec else ""
    return new_run_dir(f"{grid.name}{suffix}")


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


def run_plan(grid: Grid, directory: Path, plan: SweepPlan, resume: bool = False,
             shard_spec: tuple[int, int] | None = None, progress: SweepProgress | None = None,
             command: str | None = None) -> SweepResult:
    """Run ``plan`` on every variant of ``grid`` (or of one shard) into ``directory/results.jsonl``: the
    driver of a local or Ray sweep, and of each Slurm shard.

    Variants whose rows are all in the store are skipped when resuming, and a row already there is
    never written twice.
    """
    variants = select_variants(grid, shard_spec)
    devices = plan.devices()
    options = getattr(plan, "options", None)  # a measured plan's MeasureOptions
    measure = dataclasses.asdict(options) if options is not None else None
    with prepare_run_dir(directory, grid, resume, shard_spec, command, measure):  # DIR/.lock, held until the end
        store = JsonlStore(directory)
        try:
            return _run(variants, devices, directory, plan, store, progress or SweepProgress())
        finally:
            plan.finish()


def _run(variants: list[VariantSpec], devices: list[str], directory: Path, plan: SweepPlan, store: JsonlStore,
         progress: SweepProgress) -> SweepResult:
    done = store.keys()
    plan.start(directory)
    todo = [spec for spec in variants if not plan.keys(spec) <= done]
    result = SweepResult(directory, planned=len(variants), skipped=len(variants) - len(todo))
    if progress.start:
        progress.start(len(todo), 0)
    lock = threading.Lock()
    queue = list(todo)

    def write(rows: list[AnyRow]) -> None:
        with lock:
            for row in rows:
                if row.key in done:
                    continue
                store.append(row)
                done.add(row.key)
                result.counts[row.status] = result.counts.get(row.status, 0) + 1

    def worker(device: str) -> None:
        while True:
            with lock:
                if not queue:
                    return
                spec = queue.pop(0)
            rows = plan.rows(spec, device, done, store, write)
            write(rows)
            if progress.variant:
                with lock:
                    progress.variant(spec, rows)

    if len(devices) == 1:
        worker(devices[0])
    else:
        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in devices]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return result
