"""One entry point for a sweep, whatever runs it: :func:`run_sweep`.

Local and Ray sweeps run the ordinary driver (:func:`bench.sweep.run_plan`) with a local or a Ray plan;
a Slurm sweep is a job array of shards, each an ordinary run folder, merged into the run folder
(:mod:`bench.executors.slurm`). All three check the run folder the same way (:mod:`bench.rundir`),
return one :class:`~bench.sweep.SweepResult`, and leave the reports written.
"""

from __future__ import annotations

from pathlib import Path

from bench.env import read_env
from bench.executors import ExecutorConfig, engine
from bench.grid import Grid
from bench.measure import plan_for
from bench.options import MeasureOptions
from bench.store import JsonlStore
from bench.sweep import SweepPlan, SweepProgress, SweepResult, default_out_dir, run_plan
from nectargan.errors import NectarGANError


def run_sweep(grid: Grid, options: MeasureOptions | None, executor: ExecutorConfig | None = None, *,
              out: Path | None = None, resume: bool = False, shard: tuple[int, int] | None = None,
              command: str | None = None, progress: SweepProgress | None = None) -> SweepResult:
    """Profile (``options`` None: static only) or measure every variant of ``grid`` into a run folder
    (``out``, default ``results/runs/<grid>-<time>``), then write its reports.

    ``executor`` (default: this machine) says where; ``shard`` (K, N) runs part K of N here (a remote
    executor splits the grid itself). Every check runs before anything is written or submitted; a
    Ctrl-C keeps every finished row (``resume`` continues the run). A detached Slurm sweep returns once
    its jobs are submitted (``result.detached``).
    """
    executor = executor or ExecutorConfig()
    if executor.remote and shard is not None:
        raise NectarGANError(f"shard {shard[0]}/{shard[1]} with executor {executor.kind!r}: the executor splits the "
                             "grid itself; drop the shard (or set shards in [executor] for Slurm)")
    slurm = engine("slurm") if executor.kind == "slurm" else None  # a missing extra is one line, now
    plan: SweepPlan | None = None
    if executor.kind == "ray":
        plan = engine("ray").RayPlan(options, executor)
    elif executor.kind == "local":
        plan = plan_for(options)
    if plan is not None:
        plan.devices()  # connect, and check the devices (a cluster's GPUs), before anything is written
    if resume and out is None:
        raise NectarGANError("--resume needs --out: the run folder to continue")
    directory = out if out is not None else default_out_dir(grid, shard)
    if progress is not None and progress.folder:
        progress.folder(directory)
    if slurm is not None:
        return slurm.sweep(grid, directory, options, executor, resume, command, progress)
    result = run_plan(grid, directory, plan, resume, shard, progress, command)
    result.written = write_run_reports(directory, grid.name)
    return result


def write_run_reports(directory: Path, title: str) -> list[Path]:
    """The run folder's reports from its rows (results.csv, report.md, plots)."""
    from bench.report import write_reports

    env = read_env(directory)
    return write_reports(directory, list(JsonlStore(directory).iter_rows()), [env] if env else [], title=title)


def collect(directory: Path) -> tuple[SweepResult, dict[str, str]]:
    """Merge what a sweep sent to Slurm has written so far (:func:`bench.executors.slurm.collect`)."""
    return engine("slurm").collect(directory)
