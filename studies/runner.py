"""Run a study: check the config against the storage, create the study, then run its workers.

The workers (:mod:`studies.worker`) run in this process (one), in forked processes (``--workers N``)
or on a cluster (:mod:`studies.cluster`). ``n_trials`` is the number of trials this invocation adds,
split between the workers, so running the same command again adds as many more.

Ctrl-C: the running trial is marked FAIL with reason ``interrupted (Ctrl-C)``, finished trials stay
in the storage, and :func:`run_study` raises :class:`StudyInterrupted` (a ``KeyboardInterrupt``)
with a one-line account; workers are interrupted too and exit quietly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from bench.executors import ExecutorConfig
from nectargan.errors import NectarGANError
from studies import cluster
from studies.config import StudyConfig
from studies.floor import record_floor, study_floor
from studies.objective import INTERRUPTED
from studies.space import check_architectures_fit
from studies.storage import open_storage
from studies.worker import (
    ENDED_ATTR,
    LOST,
    RAN_ON_ATTR,
    RUN_ATTR,
    StudyRun,
    check_existing,
    load_existing,
    open_study,
    quiet_failed_trials,
    run_worker,
)

# what the command and the tests import from here; the worker's names live in studies.worker
__all__ = ["ENDED_ATTR", "LOST", "RAN_ON_ATTR", "RUN_ATTR", "StudyInterrupted", "StudyRun", "ensure_data",
           "open_study", "run_study", "run_worker"]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
WORKER_STOP_S = 60  # how long interrupted workers get to mark their trials before they are terminated


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; ``message`` says what was kept and how to continue."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.message = message
        self.summary = summary


def ensure_data(config: StudyConfig) -> None:
    """Build the shipped dataset when the config names a task and the folder is missing."""
    root = Path(config.data_path)
    if (root / "train").is_dir():
        return
    if config.data_task is None:
        raise NectarGANError(f"dataset {root} does not exist; build it with nectargan-bench dataset "
                             "or set [data].task so the study builds it")
    from nectargan.data.samples import build_sample_dataset

    build_sample_dataset(root, config.data_task, size=config.data_size, count=config.data_count,
                         seed=config.data_seed)


def _check_fixed_settings(config: StudyConfig) -> None:
    """Device and precision problems are config errors, not one failed trial after another."""
    from nectargan.train.config import TrainConfig, resolve

    resolve(TrainConfig(**{k: v for k, v in config.fixed.items() if k in ("device", "precision")}))


def _split(total: int | None, workers: int) -> list[int | None]:
    if total is None:
        return [None] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def _interrupt_once(signum: int, frame: Any) -> None:
    """SIGINT handler: one KeyboardInterrupt; further ones (the terminal's and the parent's) are ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_once() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _interrupt_once)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_main(run: StudyRun, index: int, n_trials: int | None) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        run_worker(run, index, n_trials)
    except KeyboardInterrupt:
        sys.exit(130)  # the trial is marked; the parent tells the user
    except Exception as exc:  # one line, as the command promises; the parent reports the exit code
        print(f"Error: worker {index}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        sys.exit(1)


def _stop_workers(processes: list) -> None:
    """Interrupt the workers (a terminal's Ctrl-C reaches them too), let them mark their trials, then end them."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + WORKER_STOP_S
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()


def run_study(run: StudyRun, on_progress: Callable[[dict[str, Any]], None] | None = None,
              executor: ExecutorConfig | None = None) -> dict[str, Any]:
    """Prepare data and the study, run the workers, return a summary of what this invocation added.

    ``executor`` (slurm or ray) runs the workers on a cluster (:mod:`studies.cluster`); with
    ``detach`` it returns once they are submitted, the summary's ``detached`` naming their jobs.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = run.config()
    if run.run_id is None:  # tag this invocation's trials: its summary counts them, not another command's
        run = replace(run, run_id=uuid.uuid4().hex[:12])
    remote = executor is not None and executor.remote
    if remote:
        run = cluster.prepare_run(run, config, executor)
    if run.workers < 1:
        raise NectarGANError(f"workers={run.workers} is not valid: use 1 or more")
    n_trials = run.n_trials if run.n_trials is not None else (None if run.timeout_s else config.n_trials)
    if n_trials is not None and n_trials < 1:
        raise NectarGANError(f"n_trials={n_trials} is not valid: use 1 or more")
    if run.heartbeat_s < 1:
        raise NectarGANError(f"heartbeat={run.heartbeat_s} is not valid: use 1 second or more")
    if run.timeout_s is not None and run.timeout_s <= 0:
        raise NectarGANError(f"timeout={run.timeout_s:g} is not valid: use a positive number of seconds")
    check_architectures_fit(config)
    if not remote:  # a cluster's nodes, not this login node, have the devices the settings name
        _check_fixed_settings(config)
    storage = open_storage(run.storage, heartbeat_s=run.heartbeat_s, grace_s=run.grace_s)
    existing = load_existing(storage, run.name(config))
    if existing is not None:
        check_existing(run, config, existing)  # before anything is written
    before = {t.number for t in existing.get_trials(deepcopy=False)} if existing is not None else set()
    ensure_data(config)
    floor = study_floor(config)  # the dataset's trivial predictors; bad data is an error before the storage is written
    study = open_study(run, config, config.seed)  # create it once, before the workers race to
    record_floor(study, floor, config.data_path)  # once, for the report (studies.floor)
    started = time.perf_counter()
    quiet_failed_trials()

    def progress(_study: optuna.Study | None = None, _trial: Any = None) -> None:
        if on_progress is None:
            return
        trials = [t for t in study.get_trials(deepcopy=False) if t.number not in before]
        finished = [t for t in trials if t.state in FINISHED]
        on_progress({"finished": len(finished), "total": n_trials, "running": len(trials) - len(finished),
                     "best": _best(study), "elapsed_s": time.perf_counter() - started})

    shares = _split(n_trials, run.workers)
    try:
        with _sigint_once():
            if remote:
                outcomes = cluster.run_workers(run, config, executor, shares, progress)
                if outcomes is None:
                    return _summary(run, study, before) | {"detached": True}
                progress()
                cluster.check_outcomes(outcomes)
            elif run.workers == 1:
                progress()
                run_worker(run, 0, shares[0], callbacks=[progress])
            else:
                _run_processes(run, shares, progress)
    except KeyboardInterrupt:
        summary = _summary(run, study, before)
        raise StudyInterrupted(_interrupted_message(run, summary), summary) from None
    return _summary(run, study, before)


def _run_processes(run: StudyRun, shares: list[int | None], progress: Callable[[], None]) -> None:
    from bench.launcher import fork_context

    # forked from a server that imported torch and the objective once: a worker starts in under a second
    context = fork_context(preload=("studies.runner",))
    processes = [context.Process(target=_worker_main, args=(run, i, share), daemon=False)
                 for i, share in enumerate(shares) if share != 0]
    for process in processes:
        process.start()
    try:
        while any(p.is_alive() for p in processes):
            progress()
            time.sleep(1.0)
    except KeyboardInterrupt:
        _stop_workers(processes)
        raise
    finally:
        for process in processes:
            process.join()
    progress()
    if any(p.exitcode == 130 for p in processes):  # a worker was interrupted on its own (kill -INT)
        raise KeyboardInterrupt
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise NectarGANError(f"{len(failed)} worker process(es) exited with codes {failed}")


def _summary(run: StudyRun, study: optuna.Study, before: set[int]) -> dict[str, Any]:
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.number not in before and t.user_attrs.get(RUN_ATTR) == run.run_id]
    return {
        "study": study.study_name, "storage": run.storage, "added": len(trials),
        "states": {s.name: sum(1 for t in trials if t.state == s) for s in optuna.trial.TrialState
                   if any(t.state == s for t in trials)},
        "best": _best(study), "total_trials": len(study.trials),
        "interrupted": [t.number for t in trials if t.user_attrs.get("reason") == INTERRUPTED],
        "finished": sum(1 for t in trials if t.state in FINISHED and t.user_attrs.get("reason") != INTERRUPTED),
        "kept": sum(1 for t in study.get_trials(deepcopy=False)
                    if t.state in FINISHED and t.user_attrs.get("reason") != INTERRUPTED),
    }


def _interrupted_message(run: StudyRun, summary: dict[str, Any]) -> str:
    marked = summary["interrupted"]
    trials = (f"; trial{'s' if len(marked) > 1 else ''} {', '.join(map(str, marked))} marked FAIL "
              f"(reason: {INTERRUPTED})") if marked else ""
    kept = summary["kept"]
    return (f"Interrupted. Study {summary['study']!r} keeps {kept} finished trial{'' if kept == 1 else 's'} "
            f"({summary['finished']} from this run) in {run.storage}{trials}; continue with the same command")


def _best(study: optuna.Study) -> str:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return "-"
    if len(study.directions) > 1:
        return f"{len(study.best_trials)} on the Pareto front"
    best = study.best_trial
    return f"{best.value:.4g} (trial {best.number})"
