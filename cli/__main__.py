"""``python -m cli``: the same as the ``nectargan-bench`` command."""

import sys

from cli import main

if __name__ == "__main__":  # a fork-server child imports this module again; it must not run the command
    sys.exit(main())
