"""The ``nectargan-bench`` command line: the application layer over ``nectargan``, ``bench`` and ``studies``.

Each command module is a few thin functions that parse options, call library code and render its
result; the error policy (one ``Error:`` line, no traceback without ``--debug``) lives in :mod:`cli.app`.
"""

from __future__ import annotations

import sys

INTERRUPTED_AT_START = "Interrupted while starting (importing torch); nothing was done."


def main(argv: list[str] | None = None) -> int:
    """The console script: :func:`cli.app.main`, imported here so that Ctrl-C during the seconds of
    importing torch is one line and exit 130 like any other interruption, not a traceback."""
    try:
        from cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED_AT_START + "\n")
        return 130
    return run(argv)


__all__ = ["main"]
