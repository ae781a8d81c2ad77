"""The measuring harness: variant specs and grids, static profiles, measured sweeps, the results store,
reports and executors. Its entry point is :func:`bench.run.run_sweep` (also ``bench.run_sweep``); the
``nectargan-bench`` command line lives in ``cli``."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "run_sweep":  # imported on first use: it pulls in torch and the measuring code
        from bench.run import run_sweep

        return run_sweep
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
