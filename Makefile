# The README's two commands. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-cluster

STAMP := $(shell date +%Y%m%d-%H%M%S)
BENCH := .venv/bin/nectargan-bench
STORAGE := sqlite:///results/studies.db
DEVICE := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)

setup:
	@bash scripts/setup.sh

# The main job: the static sweep of the default grid, a measured (timed) sweep of the smoke grid on
# this machine's device, then a short Optuna study (the smoke config: 6 trials of 4 s at 64 px, PSNR
# against measured inference speed, NectarGAN's default generator as trial 0 and twice more with other seeds,
# then 3 searched trials, on the denoise dataset built once from the photos scikit-image and matplotlib
# install) on SQLite, its report and image grid, and the dashboard command. A smoke test, not an answer: in
# 4 s the small generators learn, NectarGAN's default does not (its report says so).
demo: setup
	@$(BENCH) sweep default --static-only --out results/runs/default-$(STAMP)
	@$(BENCH) sweep smoke --mode eager --min-block-s 0.1 --device $(DEVICE) --out results/runs/smoke-measured-$(STAMP)
	@$(BENCH) study smoke --storage $(STORAGE) --n-trials 6
	@$(BENCH) study-report $(STORAGE) --study smoke --out results/runs/study-smoke-$(STAMP)
	@echo "Reports: results/runs/default-$(STAMP)/report.md, results/runs/smoke-measured-$(STAMP)/report.md,"
	@echo "         results/runs/study-smoke-$(STAMP)/report.md"
	@echo "Image grid (input | baseline | best PSNR | fastest within 0.5 dB | target): results/runs/study-smoke-$(STAMP)/grid.png"
	@echo "Watch the study: $(BENCH) dashboard $(STORAGE)   (then open http://127.0.0.1:8080/)"

# The README's test command: lint, then every test but the cluster tier (under 5 minutes on 2 cores).
test: setup
	@.venv/bin/ruff check nectargan bench studies cli tests
	@.venv/bin/python -m pytest -m "not cluster" --durations=15

# The cluster tier (.ci/run runs it after `make test`): sweeps and studies as jobs on a real single-node Slurm
# (with slurmdbd, so sacct answers) and a real two-node Ray cluster, both on this machine. The tests' session
# fixture runs scripts/test-cluster.sh up (installs the Debian packages on first use, as root) and, when it
# started them, down at the end; where they cannot start, the tests are skipped with the script's one line.
test-cluster: setup
	@.venv/bin/python -m pytest -m cluster --durations=10
