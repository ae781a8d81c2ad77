"""Slurm through submitit: sweeps as one job array of shards, study workers as K jobs.

Run from a login node; nothing needs an sbatch file. Each call becomes a submitit job (the calls of
one submission form one job array, limited by ``array_parallelism``). The driver polls the jobs and
resubmits one that failed (a lost node, a crash) up to ``max_retries`` times; a job that Slurm
preempts or that reaches its time limit is requeued by submitit itself (the calls are
``Checkpointable``) and resumes where it stopped, since a shard folder keeps its finished rows and a
study worker its finished trials. ``detach`` returns right after submission; ``collect`` (or the
same command with ``--resume``) picks the run up later.

``cluster = "local"`` runs the very same jobs as processes on this machine (submitit's local
executor): the way to try a cluster run, and the way the tests run this module without Slurm.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from bench.executors import ExecutorConfig, ExecutorError, Outcome, remote_device
from bench.executors.jobs import (
    ShardState,
    SweepShard,
    merge_shards,
    read_state,
    shard_count,
    shard_states,
    write_state,
)
from bench.grid import Grid
from bench.measure import MeasureOptions, plan_for
from bench.store import JsonlStore
from bench.sweep import RunLock
from nectargan.errors import NectarGANError

LOGS_DIR = "submitit"


class _Requeueable(submitit.helpers.Checkpointable):
    """A call that submitit requeues on preemption or time-out with the same state (it resumes itself)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call

    def __call__(self) -> Any:
        return self.call()


def check_available(config: ExecutorConfig, gpus: int = 0) -> None:
    """Slurm needs ``sbatch`` on this machine; say so before anything is written."""
    if config.cluster == "slurm" and shutil.which("sbatch") is None:
        raise ExecutorError("executor 'slurm' needs Slurm's sbatch on this machine: run from a login node, or set "
                            "[executor] cluster = \"local\" to run the jobs as processes here")


def make_executor(config: ExecutorConfig, folder: Path, name: str, gpus: int) -> submitit.AutoExecutor:
    """A submitit executor with the settings: one task per job, ``gpus`` GPUs, the time limit and the
    Slurm-only options (partition, account, array parallelism, extra sbatch lines)."""
    executor = submitit.AutoExecutor(folder=str(folder), cluster=config.cluster)
    params: dict[str, Any] = {"name": name, "timeout_min": config.time_min, "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": gpus}
    if config.cpus_per_task is not None:
        params["cpus_per_task"] = config.cpus_per_task
    if config.mem_gb is not None:
        params["mem_gb"] = config.mem_gb
    slurm = {"slurm_partition": config.partition, "slurm_account": config.account,
             "slurm_array_parallelism": config.array_parallelism,
             "slurm_additional_parameters": config.sbatch_parameters() or None}
    params |= {k: v for k, v in slurm.items() if v is not None}
    executor.update_parameters(**params)
    return executor


def _reason(exc: BaseException) -> str:
    """The last meaningful line of a job's error (submitit's message carries the remote traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _local_results(job: submitit.Job, config: ExecutorConfig) -> submitit.Job:
    """A local job's result file is there at once: do not wait submitit's 15 s for a shared file system
    before calling a killed job failed."""
    if config.cluster == "local":
        job._results_timeout_s = 0
    return job


def poll_s(config: ExecutorConfig) -> float:
    return 1.0 if config.cluster == "local" else 10.0


def run_calls(calls: list[Callable[[], Any]], config: ExecutorConfig, folder: Path, name: str, gpus: int,
              on_submit: Callable[[int, str], None] | None = None,
              on_poll: Callable[[], None] | None = None) -> list[Outcome] | None:
    """Submit ``calls`` as one job array and wait for them, resubmitting failures (see the module
    docstring). Returns one :class:`Outcome` per call, or None when ``config.detach``."""
    executor = make_executor(config, folder, name, gpus)
    wrapped = [_Requeueable(call) for call in calls]
    try:
        jobs = executor.submit_array(wrapped)
    except Exception as exc:  # sbatch refused (bad partition, account...): one line, before any waiting
        raise ExecutorError(f"Slurm refused the jobs: {_reason(exc)}") from None
    outcomes = [Outcome(i) for i in range(len(calls))]
    for job in jobs:
        _local_results(job, config)
    for i, job in enumerate(jobs):
        outcomes[i].job_ids.append(str(job.job_id))
        if on_submit:
            on_submit(i, str(job.job_id))
    if config.detach:
        return None
    attempts = [1] * len(calls)
    pending = set(range(len(calls)))
    while pending:
        for i in sorted(pending):
            job = jobs[i]
            if not job.done():
                continue
            error = job.exception()
            if error is None:
                outcomes[i].result = job.result()
                pending.discard(i)
            elif attempts[i] <= config.max_retries:
                jobs[i] = _local_results(executor.submit(wrapped[i]), config)
                attempts[i] += 1
                outcomes[i].job_ids.append(str(jobs[i].job_id))
                if on_submit:
                    on_submit(i, str(jobs[i].job_id))
            else:
                outcomes[i].reason = f"job {job.job_id} failed after {attempts[i]} attempt(s): {_reason(error)}"
                pending.discard(i)
        if on_poll:
            on_poll()
        if pending:
            time.sleep(poll_s(config))
    return outcomes


@dataclass
class ClusterSweep:
    """What a sweep on the cluster did: shards, their progress and failures, the files written."""

    directory: Path
    shards: list[ShardState]
    submitted: int  # shards sent (the others were complete already)
    failures: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    detached: bool = False


def _state(grid: Grid, options: MeasureOptions | None, config: ExecutorConfig, count: int,
           command: str | None) -> dict[str, Any]:
    return {"kind": "slurm", "executor": config.describe(), "grid": asdict(grid), "shards": count,
            "options": asdict(options) if options is not None else None, "command": command,
            "logs": LOGS_DIR, "jobs": {}, "submitted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _load_state(directory: Path) -> tuple[dict[str, Any], Grid, MeasureOptions | None]:
    state = read_state(directory)
    grid = Grid(**state["grid"])
    options = MeasureOptions(**state["options"]) if state.get("options") else None
    return state, grid, options


def _keys_plan(options: MeasureOptions | None):
    return plan_for(options, [remote_device(options.device if options else "cpu", "slurm")])


def sweep(grid: Grid, directory: Path, options: MeasureOptions | None, config: ExecutorConfig, resume: bool = False,
          command: str | None = None, on_start: Callable[[int, int], None] | None = None,
          on_progress: Callable[[int], None] | None = None) -> ClusterSweep:
    """Run ``grid`` as a job array of shards into ``directory`` (see :mod:`bench.executors.jobs`).

    ``resume`` submits again only the shards that are not complete (each resumes its folder).
    ``on_start(total, finished)`` and ``on_progress(finished)`` count variants.
    """
    check_available(config)
    keys_plan = _keys_plan(options)  # checks the device before anything is written
    if resume:
        if not directory.is_dir():
            raise NectarGANError(f"nothing to resume in {directory}: it does not exist; start a new run there instead "
                                 "(without resume)")
        state, stored_grid, _ = _load_state(directory)
        if stored_grid.sha256 != grid.sha256:
            raise NectarGANError(f"{directory} was started with grid {stored_grid.source} (sha256 "
                                 f"{stored_grid.sha256[:12]}), not {grid.source}; resume with the same grid file")
        count = int(state["shards"])
    else:
        if directory.exists() and any(directory.iterdir()):
            raise NectarGANError(f"{directory} is not empty; resume that run (--resume) or choose another output "
                                 "folder")
        count = shard_count(grid, config)
        state = _state(grid, options, config, count, command)
    with RunLock(directory):
        states = shard_states(grid, directory, count, keys_plan)
        todo = [s for s in states if not s.complete]
        total = sum(s.variants for s in states)
        if on_start:
            on_start(total, sum(s.finished for s in states))
        state["executor"] = config.describe()
        write_state(directory, state)
        outcome = ClusterSweep(directory, states, submitted=len(todo), detached=config.detach)
        if todo:
            calls = [SweepShard(grid, str(s.folder.resolve()), s.index, count, options, command, os.getcwd())
                     for s in todo]

            def on_submit(i: int, job_id: str) -> None:
                state["jobs"].setdefault(str(todo[i].index), []).append(job_id)
                write_state(directory, state)

            def on_poll() -> None:
                if on_progress:
                    on_progress(sum(s.finished for s in shard_states(grid, directory, count, keys_plan)))

            results = run_calls(calls, config, directory / LOGS_DIR, f"nectargan-{grid.name}",
                                config.gpus(options.device if options else "cpu"), on_submit, on_poll)
            if results is None:
                return outcome
            outcome.failures = [f"shard {todo[r.index].index}/{count}: {r.reason}" for r in results if not r.ok]
        outcome.shards = shard_states(grid, directory, count, keys_plan)
        outcome.written = merge_shards(directory, outcome.shards, {"executor": config.describe(),
                                                                   "jobs": state["jobs"]})
    return outcome


def job_states(directory: Path, state: dict[str, Any]) -> dict[str, str]:
    """Shard index -> the state of its last job, as submitit reads it (sacct on Slurm)."""
    logs = directory / state.get("logs", LOGS_DIR)
    cluster = state.get("executor", {}).get("cluster", "slurm")
    job_class = submitit.LocalJob if cluster == "local" else submitit.SlurmJob
    out = {}
    for shard, ids in state.get("jobs", {}).items():
        try:
            out[shard] = f"job {ids[-1]} {job_class(folder=logs, job_id=ids[-1]).state}"
        except Exception as exc:  # sacct missing or the job forgotten: say so, do not fail the collection
            out[shard] = f"job {ids[-1]} state unknown ({type(exc).__name__})"
    return out


def collect(directory: Path) -> tuple[ClusterSweep, dict[str, str]]:
    """Merge what a (detached) cluster sweep's shards have written so far into ``directory``."""
    state, grid, options = _load_state(directory)
    count = int(state["shards"])
    with RunLock(directory):
        states = shard_states(grid, directory, count, _keys_plan(options))
        written = merge_shards(directory, states, {"executor": state.get("executor"), "jobs": state.get("jobs")})
    incomplete = {str(s.index) for s in states if not s.complete}
    jobs = {k: v for k, v in job_states(directory, state).items() if k in incomplete}
    result = ClusterSweep(directory, states, submitted=0, written=written)
    if not any(JsonlStore(s.folder).path.is_file() for s in states):
        result.failures.append("no shard has written results yet")
    return result, jobs
