"""Variant grids: TOML files whose ``[grid]`` axes expand into a list of :class:`VariantSpec`.

A grid file looks like::

    description = "what this grid is for"      # optional

    [grid]
    n_downs = [3, 4, 5, 6]
    features = [16, 32, 64]
    block_type = ["UnetBlock", "ResidualUnetBlock"]
    upconv_type = ["Transposed", "Bilinear"]
    input_size = [256]
    exclude = [{ block_type = "ResidualUnetBlock", upconv_type = "Bilinear", n_downs = 3 }]
    include = [{ n_downs = 7, features = 8, input_size = 512 }]

    [measure]                                   # measurement options (timed sweeps)

Axes left out take the model's default. ``exclude`` drops every product combination that matches
all keys of an entry; ``include`` adds one variant per entry (keys left out take the model's
default) after the product. Only the structure and types are checked here: a well-typed value the
model rejects (``n_downs = 2``) becomes an ``invalid`` row in the sweep, with the model's message.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.executors import ExecutorError, executor_config
from bench.options import MEASURE_KEYS, check_measure_value
from bench.tomlfile import check_keys, parse_toml, read_toml, unknown_key
from bench.variant import VariantSpec
from nectargan.errors import NectarGANError

BUILTIN_GRIDS = Path(__file__).parent / "grids"


def builtin_grid_names() -> list[str]:
    """The built-in grids (``bench/grids/*.toml``) by name: the one list the help, errors and tests use."""
    return sorted(p.stem for p in BUILTIN_GRIDS.glob("*.toml"))

# Axis -> the Python type its values must have (checked strictly: a bool is not an int): VariantSpec's fields.
AXES: dict[str, type] = {f.name: str if f.type == "str" else int for f in fields(VariantSpec)}
GRID_KEYS = [*AXES, "exclude", "include"]
TOP_LEVEL_KEYS = ["grid", "measure", "executor", "description"]


class GridError(NectarGANError, ValueError):
    """A grid file that cannot be read or has a bad key, type or value."""


@dataclass(frozen=True)
class Grid:
    """A parsed grid: its axes, include/exclude entries and measure options."""

    name: str
    axes: dict[str, list[Any]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    include: list[dict[str, Any]] = field(default_factory=list)
    measure: dict[str, Any] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)  # [executor]: where it runs (bench.executors)
    description: str = ""
    source: str = "<string>"
    sha256: str = ""

    def variants(self) -> list[VariantSpec]:
        """Every variant, in a stable order: the product (minus exclusions), then the inclusions."""
        names = list(self.axes)
        seen: set[VariantSpec] = set()
        out: list[VariantSpec] = []
        product = itertools.product(*(self.axes[n] for n in names)) if names else []  # include-only: no product
        for values in product:
            combo = dict(zip(names, values, strict=True))
            if any(all(combo.get(k, _default(k)) == v for k, v in rule.items()) for rule in self.exclude):
                continue
            spec = VariantSpec(**combo)
            if spec not in seen:
                seen.add(spec)
                out.append(spec)
        for entry in self.include:
            spec = VariantSpec(**entry)
            if spec not in seen:
                seen.add(spec)
                out.append(spec)
        return out


def _default(axis: str) -> Any:
    return VariantSpec.__dataclass_fields__[axis].default


def load_grid(grid: str | Path) -> Grid:
    """Read and validate a grid TOML file (a path or a built-in grid name)."""
    file = read_toml(grid, BUILTIN_GRIDS, "grid", GridError)
    return _grid_from(file.data, name=file.name, source=file.source, sha256=file.sha256)


def parse_grid(text: str, name: str = "grid", source: str = "<string>", sha256: str = "") -> Grid:
    """Parse grid TOML text; every problem is a one-line :class:`GridError` naming the key."""
    return _grid_from(parse_toml(text, source, "grid", GridError), name=name, source=source, sha256=sha256)


def _grid_from(data: dict[str, Any], name: str, source: str, sha256: str) -> Grid:
    where = source
    check_keys(where, "", data, TOP_LEVEL_KEYS, GridError)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise GridError(f"{where}: 'description' must be a string")
    table = data.get("grid")
    if not isinstance(table, dict):
        raise GridError(f"{where}: a [grid] table with at least one axis is required (axes: {', '.join(AXES)})")
    axes: dict[str, list[Any]] = {}
    for key, values in table.items():
        if key in ("exclude", "include"):
            continue
        if key not in AXES:
            raise unknown_key(where, "[grid]", key, GRID_KEYS, GridError)
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise GridError(f"{where}: axis [grid].{key} is empty; give at least one value")
        for value in values:
            _check_type(f"{where}: [grid].{key}", key, value)
        axes[key] = values
    exclude = _entries(where, table.get("exclude", []), "exclude")
    include = _entries(where, table.get("include", []), "include")
    if not axes and not include:
        raise GridError(f"{where}: [grid] has no axes; give at least one of {', '.join(AXES)}")
    measure = data.get("measure", {})
    if not isinstance(measure, dict):
        raise GridError(f"{where}: 'measure' must be a table ([measure])")
    check_keys(where, "[measure]", measure, MEASURE_KEYS, GridError)
    for key, value in measure.items():
        check_measure_value(key, value, f"{where}: [measure].{key}", GridError)
    executor = data.get("executor", {})
    if not isinstance(executor, dict):
        raise GridError(f"{where}: 'executor' must be a table ([executor])")
    try:  # checked now, applied by the command with its flags on top
        executor_config(executor, where, table_only=True)
    except ExecutorError as exc:
        raise GridError(str(exc)) from None
    return Grid(name=name, axes=axes, exclude=exclude, include=include, measure=measure, executor=executor,
                description=description, source=source, sha256=sha256)


def _check_type(where: str, axis: str, value: Any) -> None:
    want = AXES[axis]
    if isinstance(value, bool) or not isinstance(value, want):
        kind = "an integer" if want is int else "a string"
        raise GridError(f"{where} has {value!r} ({type(value).__name__}); each value must be {kind}")


def _entries(where: str, entries: Any, which: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise GridError(f"{where}: [grid].{which} must be a list of tables, e.g. [{{ n_downs = 3 }}]")
    for i, entry in enumerate(entries):
        if not entry:
            raise GridError(f"{where}: [grid].{which}[{i}] is empty; name at least one axis")
        for key, value in entry.items():
            if key not in AXES:
                raise unknown_key(where, f"[grid].{which}[{i}]", key, AXES, GridError)
            _check_type(f"{where}: [grid].{which}[{i}].{key}", key, value)
    return entries


def shard(variants: list[VariantSpec], index: int, count: int) -> list[VariantSpec]:
    """The ``index``-th (1-based) of ``count`` disjoint, round-robin parts of ``variants``."""
    return [v for i, v in enumerate(variants) if i % count == index - 1]


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``K/N`` (1 <= K <= N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise GridError(f"shard {text!r} is not valid: use K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise GridError(f"shard {text!r} is not valid: K must be between 1 and N, e.g. 1/{max(n, 2)}")
    return k, n
