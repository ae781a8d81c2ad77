"""Reading and checking TOML config files (grids, study configs): one way to do it for both.

A config is named by a path or by the name of a built-in file (``default`` -> ``<folder>/default.toml``).
Every problem is one line naming the file and the key, with the closest valid name for a typo. The
caller chooses the error class (a :class:`~nectargan.errors.NectarGANError` and ``ValueError``), so
``GridError`` and ``StudyConfigError`` stay distinct for their users.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nectargan.errors import NectarGANError, did_you_mean

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ErrorType = type[NectarGANError]


@dataclass(frozen=True)
class TomlFile:
    """A parsed config file: its tables, where it came from and its content hash."""

    data: dict[str, Any]
    name: str  # the file's stem: the default name of a grid or study
    source: str  # the path as reports show it (relative to the working folder or project when inside)
    sha256: str


def resolve_path(config: str | Path, builtin: Path, what: str, error: ErrorType) -> Path:
    """A path as given, or the name of a built-in file in ``builtin``."""
    path = Path(config)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:
        return path
    candidate = builtin / f"{config}.toml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in builtin.glob("*.toml"))
    raise error(f"{what} {str(config)!r} is neither a file nor a built-in {what}; "
                f"built-in {what}s: {', '.join(known)}{did_you_mean(str(config), known)}")


def display_path(path: Path) -> str:
    """``path`` relative to the working folder or the project when inside them, else absolute."""
    resolved = path.resolve()
    for base in (Path.cwd(), PROJECT_ROOT):
        try:
            return resolved.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return str(resolved)


def read_toml(config: str | Path, builtin: Path, what: str, error: ErrorType) -> TomlFile:
    """Read, decode and parse a config file (a path or a built-in name)."""
    path = resolve_path(config, builtin, what, error)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} file {path} cannot be read: {exc.strerror or exc}") from None
    source = display_path(path)
    return TomlFile(parse_toml(raw, source, what, error), path.stem, source, hashlib.sha256(raw).hexdigest())


def parse_toml(raw: bytes | str, source: str, what: str, error: ErrorType) -> dict[str, Any]:
    """TOML text -> tables; undecodable or invalid text is one line naming ``source``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise error(f"{what} file {source} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} file {source} is not valid TOML: {exc}") from None


def unknown_key(source: str, table: str, key: str, valid: Iterable[str], error: ErrorType) -> NectarGANError:
    """The error for ``key`` not allowed in ``table`` (``[grid]``; empty for the top level) of ``source``."""
    valid = list(valid)
    name = f"key {table}.{key}" if table else f"top-level key {key!r}"
    return error(f"{source}: unknown {name}{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")


def check_keys(source: str, table: str, data: dict[str, Any], valid: Iterable[str], error: ErrorType) -> None:
    valid = list(valid)
    for key in data:
        if key not in valid:
            raise unknown_key(source, table, key, valid, error)


def section(data: dict[str, Any], name: str, valid: Iterable[str], source: str, error: ErrorType) -> dict[str, Any]:
    """The table ``[name]`` (empty when absent), its keys checked against ``valid``."""
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise error(f"{source}: [{name}] must be a table")
    check_keys(source, f"[{name}]", table, valid, error)
    return table


def is_real(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(where: str, value: Any, error: ErrorType, kind: type = float, minimum: float | None = None,
           above: float | None = None) -> Any:
    """``value`` checked to be an integer (``kind=int``) or a finite number, ``>= minimum``, ``> above``."""
    ok = isinstance(value, int) and not isinstance(value, bool) if kind is int else is_real(value)
    if not ok:
        raise error(f"{where} = {value!r} must be {'an integer' if kind is int else 'a number'}")
    if minimum is not None and value < minimum:
        raise error(f"{where} = {value!r} must be >= {minimum:g}")
    if above is not None and value <= above:
        raise error(f"{where} = {value!r} must be > {above:g}")
    return value
