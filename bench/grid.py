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

import hashlib
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.variant import VariantSpec
from nectargan.errors import NectarGANError, did_you_mean

BUILTIN_GRIDS = Path(__file__).parent / "grids"

# Axis -> the Python type its values must have (checked strictly: a bool is not an int).
AXES: dict[str, type] = {
    "n_downs": int,
    "features": int,
    "block_type": str,
    "upconv_type": str,
    "input_size": int,
    "in_channels": int,
    "out_channels": int,
    "use_dropout_layers": int,
    "batch_size": int,
}
GRID_KEYS = [*AXES, "exclude", "include"]
TOP_LEVEL_KEYS = ["grid", "measure", "description"]
# Options of timed sweeps (bench sweep without --static-only); each a list of strings or numbers.
MEASURE_KEYS = ["task", "mode", "precision", "layout", "device", "threads", "timeout_s"]


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
    description: str = ""
    source: str = "<string>"
    sha256: str = ""

    def variants(self) -> list[VariantSpec]:
        """Every variant, in a stable order: the product (minus exclusions), then the inclusions."""
        names = list(self.axes)
        seen: set[VariantSpec] = set()
        out: list[VariantSpec] = []
        for values in itertools.product(*(self.axes[n] for n in names)):
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


def resolve_grid_path(grid: str | Path) -> Path:
    """A path as given, or the name of a built-in grid (``default``, ``smoke``)."""
    path = Path(grid)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    builtin = BUILTIN_GRIDS / f"{grid}.toml"
    if builtin.exists():
        return builtin
    known = sorted(p.stem for p in BUILTIN_GRIDS.glob("*.toml"))
    raise GridError(
        f"grid {str(grid)!r} is neither a file nor a built-in grid; built-in grids: {', '.join(known)}"
        f"{did_you_mean(str(grid), known)}"
    )


def load_grid(grid: str | Path) -> Grid:
    """Read and validate a grid TOML file (a path or a built-in grid name)."""
    path = resolve_grid_path(grid)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GridError(f"grid file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GridError(f"grid file {path} is not UTF-8 text") from None
    return parse_grid(text, name=path.stem, source=_display_path(path), sha256=hashlib.sha256(raw).hexdigest())


def _display_path(path: Path) -> str:
    """``path`` relative to the working folder or the project when inside them, else absolute."""
    resolved = path.resolve()
    for base in (Path.cwd(), BUILTIN_GRIDS.parent.parent):
        try:
            return resolved.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return str(resolved)


def parse_grid(text: str, name: str = "grid", source: str = "<string>", sha256: str = "") -> Grid:
    """Parse grid TOML text; every problem is a one-line :class:`GridError` naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"grid file {source} is not valid TOML: {exc}") from None
    where = source
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise GridError(
                f"{where}: unknown top-level key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}; "
                f"valid keys: {', '.join(TOP_LEVEL_KEYS)}"
            )
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
            raise GridError(
                f"{where}: unknown key [grid].{key}{did_you_mean(key, GRID_KEYS)}; "
                f"valid keys: {', '.join(GRID_KEYS)}"
            )
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
    for key, value in measure.items():
        if key not in MEASURE_KEYS:
            raise GridError(
                f"{where}: unknown key [measure].{key}{did_you_mean(key, MEASURE_KEYS)}; "
                f"valid keys: {', '.join(MEASURE_KEYS)}"
            )
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise GridError(f"{where}: [measure].{key} must be a non-empty list of strings or numbers")
    return Grid(name=name, axes=axes, exclude=exclude, include=include, measure=measure,
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
                raise GridError(
                    f"{where}: unknown key [grid].{which}[{i}].{key}{did_you_mean(key, list(AXES))}; "
                    f"valid keys: {', '.join(AXES)}"
                )
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
        raise GridError(f"--shard {text!r} is not valid: use K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise GridError(f"--shard {text!r} is not valid: K must be between 1 and N, e.g. 1/{max(n, 2)}")
    return k, n
