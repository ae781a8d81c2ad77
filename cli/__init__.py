"""The ``nectargan-bench`` command line: the application layer over ``nectargan``, ``bench`` and ``studies``.

Each command module is a few thin functions that parse options, call library code and render its
result; the error policy (one ``Error:`` line, no traceback without ``--debug``) lives in :mod:`cli.app`.
"""

from cli.app import main

__all__ = ["main"]
