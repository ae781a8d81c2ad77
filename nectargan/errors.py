"""The project's own exception root.

Every error the library raises on purpose derives from :class:`NectarGANError`, so the CLI can print
it as one line and exit non-zero. Argument errors are also :class:`ValueError`, as NectarGAN's users
expect from a constructor given a bad value.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NectarGANError(Exception):
    """Root of the errors this project raises deliberately (shown without a traceback)."""


class InvalidArgumentError(NectarGANError, ValueError):
    """An argument has a value the model or tool cannot use."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """Return the choice closest to ``name`` (for 'did you mean' hints), or None."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in choices}
        return lowered.get(str(name).lower())
    return matches[0]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix, or an empty string when nothing is close."""
    match = closest(name, choices)
    return f" (did you mean {match!r}?)" if match is not None else ""
