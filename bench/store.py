"""The results store: an append-only set of rows, each identified by its ``key``.

On disk it is ``DIR/results.jsonl``: one JSON object per line, written with a single ``write`` and
flushed (and fsynced) as each row finishes, so a killed run loses at most the row in progress. A
torn last line (the process died mid-write) is skipped when reading and cut off before the next
append, so earlier rows are never corrupted. Rows with the same key: the last one wins.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.rows import MEASURE_KIND, AnyRow, SchemaError, as_dict, upgraded
from nectargan.errors import NectarGANError

RESULTS_FILE = "results.jsonl"
RUNS_ROOT = Path("results/runs")  # where generated run folders go by default (git-ignored)
Row = dict[str, Any]  # a row as stored (bench.rows types it)


def new_run_dir(name: str, root: Path = RUNS_ROOT) -> Path:
    """A fresh default run folder: ``results/runs/<name>-<YYYYmmdd-HHMMSS>``."""
    return root / f"{name}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class MemoryStore:
    """An in-memory store, for tests and for merging."""

    def __init__(self, rows: Iterable[Row] = ()) -> None:
        self._rows: list[Row] = []
        for row in rows:
            self.append(row)

    def append(self, row: AnyRow | Row) -> None:
        row = as_dict(row)
        if "key" not in row:
            raise ValueError("a row needs a 'key'")
        self._rows.append(json.loads(json.dumps(_clean(row))))

    def iter_rows(self) -> Iterator[Row]:
        latest: dict[str, Row] = {}
        for row in self._rows:
            latest.pop(row["key"], None)
            latest[row["key"]] = row
        yield from latest.values()

    def keys(self) -> set[str]:
        return {row["key"] for row in self._rows}


class JsonlStore:
    """``DIR/results.jsonl``, crash-safe as described in the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RESULTS_FILE
        self.fsync = fsync
        self._repaired = False

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def _repair_tail(self) -> None:
        """Cut a torn last line (no trailing newline) so the next append starts on a fresh line."""
        if self._repaired or not self.path.exists():
            self._repaired = True
            return
        with open(self.path, "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    handle.seek(0)
                    data = handle.read()
                    handle.truncate(data.rfind(b"\n") + 1)
        self._repaired = True

    def append(self, row: AnyRow | Row) -> None:
        row = as_dict(row)
        if "key" not in row:
            raise ValueError("a row needs a 'key'")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        line = json.dumps(_clean(row), separators=(",", ":"), allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())

    def _raw_rows(self) -> Iterator[Row]:
        if not self.path.exists():
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NectarGANError(f"results file {self.path} cannot be read: {exc}") from None
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # torn last line of a killed run
                    continue
                raise NectarGANError(f"{self.path}: line {number} is not valid JSON") from None
            if not isinstance(row, dict) or "key" not in row:
                raise NectarGANError(f"{self.path}: line {number} is not a result row (no 'key')")
            try:  # today's schema version (an older row upgraded, a newer one refused)
                row = upgraded(row, f"{self.path}: line {number}")
            except SchemaError as exc:
                raise NectarGANError(str(exc)) from None
            yield row

    def iter_rows(self) -> Iterator[Row]:
        latest: dict[str, Row] = {}
        for row in self._raw_rows():
            latest.pop(row["key"], None)
            latest[row["key"]] = row
        yield from latest.values()

    def keys(self) -> set[str]:
        return {row["key"] for row in self._raw_rows()}


def write_rows_atomic(directory: str | os.PathLike[str], rows: Iterable[AnyRow | Row]) -> None:
    """Replace ``DIR/results.jsonl`` by ``rows`` with one rename (for derived data such as merged shards):
    a reader sees the old file or the new one, never half of one."""
    path = Path(directory) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RESULTS_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(_clean(as_dict(row)), separators=(",", ":"), allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def merged_rows(directories: Iterable[str | os.PathLike[str]]) -> list[Row]:
    """Rows of several run directories (shards, or runs that measured different things).

    A row found in several (a static row: the same variant's counts) is kept once, the last one. A
    measurement found in two directories is refused: one would silently replace the other (two runs of
    the same measurements are for ``compare``)."""
    merged = MemoryStore()
    measured_in: dict[str, str] = {}  # measurement key -> the directory that holds it
    for directory in directories:
        store = JsonlStore(directory)
        if not store.path.is_file():
            raise NectarGANError(f"{directory} holds no {RESULTS_FILE}: is it a sweep's output folder?")
        rows = list(store.iter_rows())
        clash = [str(r["key"]) for r in rows if r.get("kind") == MEASURE_KIND and str(r["key"]) in measured_in]
        if clash:
            raise NectarGANError(
                f"{measured_in[clash[0]]} and {directory} both hold the measurement {clash[0]!r} ({len(clash)} in "
                "common): merging would keep only one of each; compare two runs of the same measurements with "
                "'nectargan-bench compare A B', and merge only runs (or shards) that measured different things")
        measured_in |= {str(r["key"]): str(directory) for r in rows if r.get("kind") == MEASURE_KIND}
        for row in rows:
            merged.append(row)
    return list(merged.iter_rows())
