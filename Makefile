# The README's two commands. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/nectargan-bench sweep default --static-only

test: setup
	@.venv/bin/ruff check nectargan bench studies tests
	@.venv/bin/python -m pytest

