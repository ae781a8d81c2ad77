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

import contextlib
import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher

from bench.executors import LOGS_DIR, ExecutorConfig, ExecutorError, Outcome, check_gpus, last_line, remote_device
from bench.executors.jobs import (
    STATE_FILE,
    SweepShard,
    merge_shards,
    read_state,
    shard_count,
    shard_states,
    write_state,
)
from bench.grid import Grid
from bench.measure import plan_for
from bench.options import MeasureOptions
from bench.rundir import RunLock, StartedRun, check_folder, check_fresh, check_same_run
from bench.store import JsonlStore
from bench.sweep import ShardState, SweepProgress, SweepResult


class _Requeueable(submitit.helpers.Checkpointable):
    """A call that submitit requeues on preemption or time-out with the same state (it resumes itself)."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.call = call

    def __call__(self) -> Any:
        return self.call()


def check_available(config: ExecutorConfig, gpus: int = 0) -> None:
    """Slurm needs ``sbatch`` on this machine; say so before anything is written. (``gpus``: the engines'
    common signature; Slurm itself refuses a request for GPUs a partition lacks, at submission.)"""
    if config.cluster == "slurm" and shutil.which("sbatch") is None:
        raise ExecutorError("executor 'slurm' needs Slurm's sbatch on this machine: run from a login node, or set "
                            "[executor] cluster = \"local\" to run the jobs as processes here")


def _sacct_reason() -> str | None:
    """sacct's own last error line, from one quiet call (its lines are kept off the terminal while polling)."""
    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
    return lines[-1][:200] if probe.returncode != 0 and lines else None


class SacctWarnings(logging.Filter):
    """submitit warns "Bypassing sacct error ..., status may be inaccurate" on every poll where ``sacct``
    fails (accounting off): dozens of lines in the user's terminal. The first becomes one line of ours,
    with sacct's own reason (``probe``), the rest are dropped."""

    MARK = "Bypassing sacct error"

    def __init__(self, probe: Callable[[], str | None] = _sacct_reason) -> None:
        super().__init__()
        self.seen = 0
        self.probe = probe

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.MARK not in message:
            return True
        self.seen += 1
        if self.seen > 1:
            return False
        error = " ".join(message.split(self.MARK, 1)[1].split(", status may be inaccurate")[0].split())
        status = error.rpartition("returned ")[2].rstrip(".") if "returned " in error else error[:200]
        record.msg, record.args = (f"Slurm's sacct does not answer ({self.probe() or status}): job states may be "
                                   "inaccurate until it does (said once)"), ()
        return True


SACCT_WARNINGS = SacctWarnings()


class QuietSacct(SlurmInfoWatcher):
    """submitit's shared sacct poll with sacct's own error lines kept off the terminal: while accounting is
    off, sacct prints three of them on every poll. The failure still reaches :class:`SacctWarnings`."""

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        return None if command is None else ["sh", "-c", 'exec "$0" "$@" 2>/dev/null', *command]


class _CurrentStderr:
    """``sys.stderr`` as it is when written to: a progress bar on the terminal replaces it with a proxy that
    prints lines above the bar (submitit's handler kept the stream of its import, and the bar drew over it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _quiet_submitit() -> None:
    """Say submitit's troubles once and legibly: sacct's failures (above); each warning on stderr only
    (submitit's logging config prints a warning on stdout too, so every one showed twice in a terminal),
    above the progress bar rather than under it."""
    submitit_logger = logging.getLogger("submitit")
    if SACCT_WARNINGS not in submitit_logger.filters:
        submitit_logger.addFilter(SACCT_WARNINGS)
    for handler in submitit_logger.handlers:
        if handler.get_name() == "submitit_out" and not handler.filters:
            handler.addFilter(lambda record: record.levelno < logging.WARNING)
        if handler.get_name() == "submitit_err" and isinstance(handler, logging.StreamHandler) and not isinstance(
                handler.stream, _CurrentStderr):
            handler.stream = _CurrentStderr()  # not setStream: it flushes the old stream, which may be closed
    if not isinstance(submitit.SlurmJob.watcher, QuietSacct):
        submitit.SlurmJob.watcher = QuietSacct(delay_s=600)  # submitit's own: one poll shared by every job


def make_executor(config: ExecutorConfig, folder: Path, name: str, gpus: int) -> submitit.AutoExecutor:
    """A submitit executor with the settings: one task per job, ``gpus`` GPUs, the time limit and the
    Slurm-only options (partition, account, array parallelism, extra sbatch lines)."""
    _quiet_submitit()
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


def _local_results(job: submitit.Job, config: ExecutorConfig) -> submitit.Job:
    """A local job's result file is there at once: do not wait submitit's 15 s for a shared file system
    before calling a killed job failed."""
    if config.cluster == "local":
        job._results_timeout_s = 0
    return job


def poll_s(config: ExecutorConfig) -> float:
    """How often the driver looks for finished jobs: their result files (a stat each); sacct is asked only as
    often as submitit's shared watcher allows (every 2 s at first, then less and less, at most every 10 min)."""
    return 1.0 if config.cluster == "local" else 2.0


JOBS_LINE_S = 10.0  # the progress line's job states: squeue is asked per job where sacct cannot tell


def run_calls(calls: list[Callable[[], Any]], config: ExecutorConfig, folder: Path, name: str, gpus: int,
              on_submit: Callable[[int, str], None] | None = None, on_poll: Callable[[], None] | None = None,
              cancel_on_interrupt: bool = False, retry_cancelled: bool = False) -> list[Outcome] | None:
    """Submit ``calls`` as one job array and wait for them, resubmitting failures (see the module
    docstring); a job cancelled with ``scancel`` is not resubmitted unless ``retry_cancelled`` (study
    workers: the study owes its trials; stop it with Ctrl-C here, or scancel after a detach). Returns one
    :class:`Outcome` per call, or None when ``config.detach``. Ctrl-C leaves the jobs running unless
    ``cancel_on_interrupt``."""
    executor = make_executor(config, folder, name, gpus)
    wrapped = [_Requeueable(call) for call in calls]
    try:
        jobs = executor.submit_array(wrapped)
    except Exception as exc:  # sbatch refused (bad partition, account...): one line, before any waiting
        raise ExecutorError(f"Slurm refused the jobs: {last_line(exc)}") from None
    outcomes = [Outcome(i) for i in range(len(calls))]
    for i, job in enumerate(jobs):
        _local_results(job, config)
        outcomes[i].job_ids.append(str(job.job_id))
        if on_submit:
            on_submit(i, str(job.job_id))
    if config.detach:
        return None
    attempts = [1] * len(calls)
    pending = set(range(len(calls)))
    try:
        while pending:
            for i in sorted(pending):
                job = jobs[i]
                if not job.done():
                    continue
                error = job.exception()
                if error is None:
                    outcomes[i].result = job.result()
                    pending.discard(i)
                elif attempts[i] <= config.max_retries and (retry_cancelled or "CANCELLED" not in str(job.state)):
                    jobs[i] = _local_results(executor.submit(wrapped[i]), config)
                    attempts[i] += 1
                    outcomes[i].job_ids.append(str(jobs[i].job_id))
                    if on_submit:
                        on_submit(i, str(jobs[i].job_id))
                else:
                    outcomes[i].reason = (f"job {job.job_id} ({job.state}) failed after {attempts[i]} attempt(s): "
                                          f"{last_line(error)}")
                    pending.discard(i)
            if on_poll:
                on_poll()
            if pending:
                time.sleep(poll_s(config))
    except KeyboardInterrupt:
        if cancel_on_interrupt:
            for i in pending:
                with contextlib.suppress(Exception):
                    jobs[i].cancel(check=False)
        raise
    return outcomes


LIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


def _job(cluster: str, logs: Path, job_id: str) -> submitit.Job:
    _quiet_submitit()  # collect reads states without an executor: the same quiet sacct poll
    job_class = submitit.LocalJob if cluster == "local" else submitit.SlurmJob
    return job_class(folder=logs, job_id=job_id)


def squeue_state(job_id: str) -> str | None:
    """The job's state as ``squeue`` lists it (the controller's view: no accounting needed), else None
    (not listed: ended or forgotten, or no squeue here)."""
    if shutil.which("squeue") is None:
        return None
    try:
        listed = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = [line.strip() for line in listed.stdout.splitlines() if line.strip()] if listed.returncode == 0 else []
    return states[0] if states else None


def job_state(cluster: str, logs: Path, job_id: str) -> str:
    """The job's state: submitit's (sacct on Slurm); where that is unknown (accounting off, sacct failing),
    squeue's, marked so."""
    try:
        state = str(_job(cluster, logs, job_id).state)
    except Exception as exc:  # sacct missing or the job forgotten
        state = f"UNKNOWN ({type(exc).__name__})"
    if state.startswith("UNKNOWN") and cluster != "local":
        listed = squeue_state(job_id)
        if listed is not None:
            return f"{listed} (squeue)"
    return state


# sacct's states, as the progress line counts them
STATE_WORDS = {"PENDING": "pending", "REQUEUED": "pending", "CONFIGURING": "pending", "RESIZING": "pending",
               "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "suspended", "COMPLETED": "done",
               "CANCELLED": "cancelled"}


def jobs_line(cluster: str, logs: Path, job_ids: list[str]) -> str:
    """``jobs: 2 running, 1 pending, 1 done``: the engine's states of ``job_ids`` (sacct's on Slurm, read
    through submitit's shared, rate-limited poll, else squeue's: :func:`job_state`); a job whose result is
    written is done."""
    counts: dict[str, int] = {}
    for job_id in job_ids:
        if _job(cluster, logs, job_id).paths.result_pickle.exists():
            state = "COMPLETED"
        else:
            state = job_state(cluster, logs, job_id).split()[0].upper()
        word = STATE_WORDS.get(state, "unknown" if state == "UNKNOWN" else "failed")
        counts[word] = counts.get(word, 0) + 1
    order = ("running", "pending", "suspended", "done", "failed", "cancelled", "unknown")
    return "jobs: " + ", ".join(f"{counts[w]} {w}" for w in order if w in counts)


def _live(cluster: str, logs: Path, job_id: str) -> str | None:
    """The state of a job that has not ended (it may still write its shard), else None."""
    state = job_state(cluster, logs, job_id)
    return state if any(state.startswith(s) for s in LIVE_STATES) else None


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


def _started(directory: Path, grid: Grid, options: MeasureOptions | None, resume: bool) -> dict[str, Any] | None:
    """The state of the run being resumed (None: a new run), checked as every resumed sweep is
    (:mod:`bench.rundir`): the same grid, and (its shard folders and row keys depend on them) every option."""
    if not resume:
        return None
    state, stored_grid, stored_options = _load_state(directory)
    started = StartedRun(stored_grid.source, stored_grid.sha256, None,
                         asdict(stored_options) if stored_options is not None else None)
    check_same_run(directory, started, grid, None, asdict(options) if options is not None else None, keys=None)
    return state


def sweep(grid: Grid, directory: Path, options: MeasureOptions | None, config: ExecutorConfig, resume: bool = False,
          command: str | None = None, progress: SweepProgress | None = None) -> SweepResult:
    """Run ``grid`` as a job array of shards into ``directory`` (see :mod:`bench.executors.jobs`).

    ``resume`` submits again only the shards that are not complete and whose last job has ended (a
    shard whose job is still pending or running is left to it); its measure options must be the run's.
    ``progress.finished(variants, jobs)`` is called as it polls; ``jobs`` is the engine's states of the
    shards' current jobs (:func:`jobs_line`).
    """
    check_available(config)
    keys_plan = _keys_plan(options)  # checks the device before anything is written
    gpus = check_gpus(config, options.device if options else "cpu")
    progress = progress or SweepProgress()
    check_folder(directory, resume, on_slurm=True)
    count = 0 if resume else shard_count(grid, config)  # checked before anything is written; resumed: the run's
    with RunLock(directory):
        check_fresh(directory, resume, on_slurm=True)
        state = _started(directory, grid, options, resume)
        fresh = state is None
        count = int(state["shards"]) if state is not None else count
        state = state if state is not None else _state(grid, options, config, count, command)
        states = shard_states(grid, directory, count, keys_plan)
        cluster = state.get("executor", {}).get("cluster", config.cluster)
        running = {s.index: live for s in states if not s.complete and (ids := state["jobs"].get(str(s.index)))
                   and (live := _live(cluster, directory / LOGS_DIR, ids[-1]))}
        todo = [s for s in states if not s.complete and s.index not in running]
        if progress.start:
            progress.start(sum(s.variants for s in states), sum(s.finished for s in states))
        state["executor"] = config.describe()
        write_state(directory, state)
        result = SweepResult(directory, planned=sum(s.variants for s in states),
                             skipped=sum(s.finished for s in states), shards=states, submitted=len(todo),
                             detached=config.detach)
        result.failures = [f"shard {k}/{count}: job {state['jobs'][str(k)][-1]} is still {live}; not submitted "
                           "again (collect when it ends)" for k, live in running.items()]
        jobs_seen = [0.0, ""]  # when, what

        def on_poll() -> None:
            if progress.finished:
                if time.monotonic() - jobs_seen[0] >= JOBS_LINE_S:
                    current = [state["jobs"][str(s.index)][-1] for s in todo]
                    jobs_seen[:] = [time.monotonic(), jobs_line(config.cluster, directory / LOGS_DIR, current)]
                progress.finished(sum(s.finished for s in shard_states(grid, directory, count, keys_plan)),
                                  str(jobs_seen[1]))

        if todo and not _submit(grid, directory, options, config, command, todo, count, state, gpus, fresh, result,
                                on_poll):
            return result  # detached
        result.shards = shard_states(grid, directory, count, keys_plan)
        result.written = merge_shards(directory, result.shards, {"executor": config.describe(), "jobs": state["jobs"]})
    return result


def _submit(grid: Grid, directory: Path, options: MeasureOptions | None, config: ExecutorConfig, command: str | None,
            todo: list[ShardState], count: int, state: dict[str, Any], gpus: int, fresh: bool, result: SweepResult,
            on_poll: Callable[[], Any]) -> bool:
    """Submit the shards ``todo`` and wait for them (False: detached), recording job ids and failures."""
    calls = [SweepShard(grid, str(s.folder.resolve()), s.index, count, options, command, os.getcwd()) for s in todo]

    def on_submit(i: int, job_id: str) -> None:
        state["jobs"].setdefault(str(todo[i].index), []).append(job_id)
        write_state(directory, state)

    try:
        outcomes = run_calls(calls, config, directory / LOGS_DIR, f"nectargan-{grid.name}", gpus, on_submit, on_poll)
    except ExecutorError:
        if fresh and not state["jobs"]:  # nothing was submitted: the corrected command may start afresh
            (directory / STATE_FILE).unlink(missing_ok=True)
            shutil.rmtree(directory / LOGS_DIR, ignore_errors=True)
        raise
    if outcomes is None:
        return False
    result.failures += [f"shard {todo[r.index].index}/{count}: {r.reason}" for r in outcomes if not r.ok]
    return True


def job_states(directory: Path, state: dict[str, Any]) -> dict[str, str]:
    """Shard index -> the state of its last job (see :func:`job_state`)."""
    logs = directory / state.get("logs", LOGS_DIR)
    cluster = state.get("executor", {}).get("cluster", "slurm")
    out = {}
    for shard, ids in state.get("jobs", {}).items():
        out[shard] = f"job {ids[-1]} {job_state(cluster, logs, ids[-1])}"
    return out


def collect(directory: Path) -> tuple[SweepResult, dict[str, str]]:
    """Merge what a (detached) cluster sweep's shards have written so far into ``directory``; the shard
    index -> job state of the unfinished ones."""
    state, grid, options = _load_state(directory)
    count = int(state["shards"])
    with RunLock(directory):
        states = shard_states(grid, directory, count, _keys_plan(options))
        written = merge_shards(directory, states, {"executor": state.get("executor"), "jobs": state.get("jobs")})
    incomplete = {str(s.index) for s in states if not s.complete}
    jobs = {k: v for k, v in job_states(directory, state).items() if k in incomplete}
    result = SweepResult(directory, planned=sum(s.variants for s in states), skipped=0, shards=states,
                         written=written)
    if not any(JsonlStore(s.folder).path.is_file() for s in states):
        result.failures.append("no shard has written results yet")
    return result, jobs
