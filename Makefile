# The README's two commands. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup demo test

STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_DATA := results/data/edges2photo-64

setup:
	@bash scripts/setup.sh

# The main job: the static sweep of the default grid, then a short pix2pix training run at 64 px on
# the dataset built from scikit-image's photos (built once, reused).
demo: setup
	@.venv/bin/nectargan-bench sweep default --static-only --out results/runs/default-$(STAMP)
	@test -d $(DEMO_DATA)/train || .venv/bin/nectargan-bench dataset --task edges2photo --out $(DEMO_DATA) --size 64
	@.venv/bin/nectargan-bench train --data $(DEMO_DATA) --input-size 64 --n-downs 3 --features 16 \
		--batch-size 8 --steps 300 --eval-every 100 --out results/runs/train-$(STAMP)

test: setup
	@.venv/bin/ruff check nectargan bench studies tests
	@.venv/bin/python -m pytest
