"""``python -m cli``: the same as the ``nectargan-bench`` command."""

import sys

from cli.app import main

sys.exit(main())
