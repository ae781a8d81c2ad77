"""Run a grid: one row per variant into the results store, resumable and shardable."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import ENV_FILE, collect_env, read_env, write_json_atomic
from bench.grid import Grid, shard
from bench.profile import profile_static
from bench.store import JsonlStore, Row
from bench.variant import VariantSpec
from nectargan.errors import NectarGANError

SCHEMA_VERSION = 1
STATIC_KIND = "static"
# Test-only hook: seconds to sleep after each row, so a test can kill a sweep part-way.
TEST_DELAY_ENV = "NECTARGAN_BENCH_TEST_DELAY_S"


def static_key(spec: VariantSpec) -> str:
    return f"{STATIC_KIND}|{spec.key}"


def static_row(spec: VariantSpec) -> Row:
    """Profile one variant into a row; an invalid or failing variant becomes a row too."""
    row: Row = {
        "schema": SCHEMA_VERSION,
        "kind": STATIC_KIND,
        "key": static_key(spec),
        "variant": spec.name,
        **spec.to_dict(),
        "out_channels": spec.out_channels if spec.out_channels is not None else spec.in_channels,
    }
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


@dataclass
class SweepResult:
    directory: Path
    planned: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)


def default_out_dir(grid: Grid, root: Path = Path("results/runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{grid.name}-{stamp}"


def prepare_run_dir(
    directory: Path, grid: Grid, resume: bool, shard_spec: tuple[int, int] | None, command: str | None = None
) -> None:
    """Refuse to mix runs by accident; write or extend env.json."""
    store = JsonlStore(directory)
    if store.exists() and not resume:
        raise NectarGANError(
            f"{directory} already holds results; pass --resume to continue that run or choose another --out"
        )
    if directory.exists() and not directory.is_dir():
        raise NectarGANError(f"--out {directory} exists and is not a folder")
    env = read_env(directory)
    now = collect_env(grid.source, grid.sha256, command)
    now["shard"] = f"{shard_spec[0]}/{shard_spec[1]}" if shard_spec else None
    if env is not None and resume and store.exists():
        if env.get("grid_sha256") != grid.sha256:
            raise NectarGANError(
                f"{directory} was started with grid {env.get('grid')} (sha256 {str(env.get('grid_sha256'))[:12]}), "
                f"not {grid.source} (sha256 {grid.sha256[:12]}); resume with the same grid file or choose another --out"
            )
        if env.get("shard") != now["shard"]:
            raise NectarGANError(
                f"{directory} was started with --shard {env.get('shard') or '(none)'}, not "
                f"{now['shard'] or '(none)'}; resume with the same shard or choose another --out"
            )
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
            f"--shard {shard_spec[0]}/{shard_spec[1]} is empty: the grid has only {len(variants)} variants"
        )
    return part


def run_static_sweep(
    grid: Grid,
    directory: Path,
    resume: bool = False,
    shard_spec: tuple[int, int] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_row: Callable[[VariantSpec, Row], None] | None = None,
    command: str | None = None,
) -> SweepResult:
    """Profile every variant of ``grid`` (or of one shard) into ``directory/results.jsonl``.

    Rows already in the store are skipped when resuming, so each variant is written exactly once.
    """
    variants = select_variants(grid, shard_spec)
    prepare_run_dir(directory, grid, resume, shard_spec, command)
    store = JsonlStore(directory)
    done = store.keys()
    todo = [spec for spec in variants if static_key(spec) not in done]
    result = SweepResult(directory, planned=len(variants), skipped=len(variants) - len(todo))
    if on_start:
        on_start(len(todo))
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    for spec in todo:
        row = static_row(spec)
        store.append(row)
        result.counts[row["status"]] = result.counts.get(row["status"], 0) + 1
        if on_row:
            on_row(spec, row)
        if delay:
            time.sleep(delay)
    return result


def rows_of_kind(rows: list[Row], kind: str = STATIC_KIND) -> list[Row]:
    return [r for r in rows if r.get("kind") == kind]


def status_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("status", "?")] = counts.get(row.get("status", "?"), 0) + 1
    return counts
