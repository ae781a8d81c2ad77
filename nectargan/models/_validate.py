"""Small argument checks shared by the models; each failure names the argument, value and rule."""

from __future__ import annotations

from typing import Any

from nectargan.errors import InvalidArgumentError


def require_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) within [minimum, maximum], else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(
            f"{name}={value!r} is not valid: it must be an integer"
            + (f" >= {minimum}" if minimum is not None else "")
            + f", got {type(value).__name__}"
        )
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            rule = f">= {minimum}"
        elif minimum is None:
            rule = f"<= {maximum}"
        else:
            rule = f"between {minimum} and {maximum}"
        raise InvalidArgumentError(f"{name}={value!r} is not valid: it must be an integer {rule}")
    return value
