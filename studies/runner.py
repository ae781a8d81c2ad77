"""Run a study: create or resume it in a storage, then optimise in one or several worker processes.

Each worker is an ordinary ``study.optimize`` loop against the shared storage with its own sampler
seed; there is no coordinator beyond Optuna's storage. ``n_trials`` is the number of trials this
invocation adds, split between the workers, so running the same command again adds as many more.

The process that creates the study enqueues the baseline (:mod:`studies.baseline`), so it is trial 0.
An existing study is checked against the config before anything is written: the same directions
and a compatible space (:func:`studies.space.check_against_study`).

Ctrl-C: the running trial is marked FAIL with reason ``interrupted (Ctrl-C)``, finished trials stay
in the storage, and :func:`run_study` raises :class:`StudyInterrupted` (a ``KeyboardInterrupt``)
with a one-line account; workers are interrupted too and exit quietly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from bench.executors import ExecutorConfig, here
from nectargan.errors import NectarGANError
from nectargan.train import NonFiniteLossError
from studies.baseline import baseline_settings, enqueue_baseline, why_no_baseline
from studies.config import StudyConfig, load_study_config
from studies.objective import INTERRUPTED, run_trial
from studies.space import check_against_study, check_architectures_fit
from studies.storage import DEFAULT_STORAGE, HEARTBEAT_S, artifact_store, file_lock, open_storage, sqlite_path

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
STUDIES_ROOT = Path("results/studies")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
WORKER_STOP_S = 60  # how long interrupted workers get to mark their trials before they are terminated


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; ``message`` says what was kept and how to continue."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.message = message
        self.summary = summary


class _NoTracebacks(logging.Filter):
    """Optuna logs a failed trial with its traceback; trials carry their reason, so keep one line.

    An interrupted trial is not logged at all (the command says it), nor its "failed with value None".
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            return False
        if "failed with value None" in record.getMessage():
            return False
        record.exc_info = None
        record.exc_text = None
        return True


def _quiet_failed_trials() -> None:
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoTracebacks) for f in logger.filters):
        logger.addFilter(_NoTracebacks())


@dataclass(frozen=True)
class StudyRun:
    """What to run: everything a worker process needs to rebuild its objective."""

    config_path: str
    storage: str = DEFAULT_STORAGE
    study_name: str | None = None
    n_trials: int | None = None
    timeout_s: float | None = None
    workers: int = 1
    out_root: str | None = None
    heartbeat_s: int = HEARTBEAT_S
    grace_s: int | None = None
    run_id: str | None = None  # tags this invocation's trials, so a restarted worker knows its own
    threads: int | None = None  # torch threads per worker (default: the cores shared among local workers)

    def config(self) -> StudyConfig:
        return load_study_config(self.config_path)

    def name(self, config: StudyConfig) -> str:
        return self.study_name or config.name

    def out(self, config: StudyConfig) -> Path:
        return Path(self.out_root) if self.out_root else STUDIES_ROOT / self.name(config)


def make_sampler(config: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler; constraints reach it through ``Trial.set_constraint`` (Optuna 5)."""
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=min(10, max(2, config.n_trials // 2)))
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if config.pruner == "hyperband":
        max_resource = config.steps or 1000
        return optuna.pruners.HyperbandPruner(min_resource=config.eval_every, max_resource=max_resource)
    return optuna.pruners.NopPruner()


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


def _load(storage: optuna.storages.BaseStorage, name: str, **kwargs) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        return None


def check_existing(run: StudyRun, config: StudyConfig, study: optuna.Study) -> None:
    """Refuse a config that cannot continue ``study``: other objectives (names or directions), other
    ``[fixed]`` settings or budget (its trials would be ranked with the study's as one), another space.
    Reads only. (Studies created before the fixed settings were recorded are checked without them.)"""
    where = f"study {study.study_name!r} in {run.storage}"
    hint = "; choose another study name (--study-name) or keep the study's settings"
    stored = [d.name.lower() for d in study.directions]
    if stored != config.directions:
        raise NectarGANError(f"{where} optimises {stored}, not {config.directions} "
                             f"({', '.join(config.objectives)}){hint}")
    attrs = study.user_attrs
    if "objectives" in attrs and list(attrs["objectives"]) != list(config.objectives):
        raise NectarGANError(f"{where} optimises {attrs['objectives']}, not {config.objectives}{hint}")
    if "fixed" in attrs:
        changed = sorted(k for k in {*attrs["fixed"], *config.fixed}
                         if attrs["fixed"].get(k, "unset") != config.fixed.get(k, "unset"))
        if changed:
            was = ", ".join(f"{k} = {attrs['fixed'].get(k, 'unset')!r}" for k in changed)
            now = ", ".join(f"{k} = {config.fixed.get(k, 'unset')!r}" for k in changed)
            raise NectarGANError(f"{where} was run with [fixed] {was}, this config says {now}{hint}")
    budget = {"steps": config.steps, "seconds": config.seconds}
    if "budget" in attrs and attrs["budget"] != budget:
        raise NectarGANError(f"{where} was run with the budget {attrs['budget']}, this config says {budget}{hint}")
    check_against_study(study, config.space, config.source)


def open_study(run: StudyRun, config: StudyConfig, seed: int) -> optuna.Study:
    """Create the study (and enqueue its baseline) or load and check it.

    Creation is atomic in every Optuna storage (the name is unique), so of several processes that
    start at once exactly one creates the study and enqueues the baseline.
    """
    storage = open_storage(run.storage, heartbeat_s=run.heartbeat_s, grace_s=run.grace_s)
    name = run.name(config)
    options = {"sampler": make_sampler(config, seed), "pruner": make_pruner(config)}
    study = _load(storage, name, **options)
    if study is not None:
        check_existing(run, config, study)
        if config.baseline:  # a study whose baseline failed or was interrupted gets another
            with _enqueue_lock(run):
                enqueue_baseline(study, config)
        return study
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=config.directions, **options)
    except optuna.exceptions.DuplicatedStudyError:  # another process created it just now
        study = optuna.load_study(study_name=name, storage=storage, **options)
        check_existing(run, config, study)
        return study
    study.set_user_attr("objectives", config.objectives)
    study.set_user_attr("fixed", config.fixed)
    study.set_user_attr("config", config.source)
    study.set_user_attr("config_sha256", config.sha256)
    study.set_user_attr("budget", {"steps": config.steps, "seconds": config.seconds})
    study.set_user_attr("env", _env())
    if not config.baseline:
        study.set_user_attr("baseline", "off ([study].baseline = false)")
    elif baseline_settings(config) is None:
        study.set_user_attr("baseline", f"none: {why_no_baseline(config)}")
    else:
        enqueue_baseline(study, config)
        study.set_user_attr("baseline", "trial 0")
    return study


def _env() -> dict[str, Any]:
    """Where the study was created (each trial records its own device too)."""
    from bench.env import collect_env

    env = collect_env()
    keys = ("host", "cpu", "cpu_count", "torch_threads", "gpu", "gpu_count", "torch", "cuda", "optuna", "git",
            "command", "started_at")
    return {k: env.get(k) for k in keys}


@contextlib.contextmanager
def _enqueue_lock(run: StudyRun) -> Iterator[None]:
    """On SQLite, the lock file that also guards the hand-out of waiting trials; elsewhere nothing.

    (On PostgreSQL two machines resuming at once may both enqueue; the second baseline prunes itself.)
    """
    database = sqlite_path(run.storage)
    if database is None:
        yield
        return
    with file_lock(database.with_name(database.name + ".lock")):
        yield


def _check_fixed_settings(config: StudyConfig) -> None:
    """Device and precision problems are config errors, not one failed trial after another."""
    from nectargan.train.config import TrainConfig, resolve

    resolve(TrainConfig(**{k: v for k, v in config.fixed.items() if k in ("device", "precision")}))


def _split(total: int | None, workers: int) -> list[int | None]:
    if total is None:
        return [None] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


RUN_ATTR = "run_id"
WORKER_ATTR = "worker"
RAN_ON_ATTR = "ran_on"
ENDED_ATTR = "ended"  # set by the worker as its objective returns or raises: the trial was not lost
LOST = "lost with its worker (the worker was restarted; the trial's settings may run again)"


def _own_trials(study: optuna.Study, run: StudyRun, index: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(RUN_ATTR) == run.run_id and t.user_attrs.get(WORKER_ATTR) == index]


def remaining_share(study: optuna.Study, run: StudyRun, index: int, n_trials: int | None) -> int | None:
    """How many of its ``n_trials`` worker ``index`` still owes, after failing the trials it lost.

    A worker runs again only after its previous process is gone (a Ray retry, a Slurm requeue or
    resubmission), so its own RUNNING trials are dead: they are marked FAIL now with reason
    :data:`LOST` (not after the heartbeat's grace period) and not counted. Trials it finished count.
    """
    if run.run_id is None:
        return n_trials
    ended, lost = 0, 0
    for trial in _own_trials(study, run, index):
        if trial.state == optuna.trial.TrialState.RUNNING:
            with contextlib.suppress(ValueError, RuntimeError):  # failed meanwhile by a heartbeat check
                optuna.trial.Trial(study, trial._trial_id).set_user_attr("reason", LOST)
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                lost += 1
        elif trial.user_attrs.get(ENDED_ATTR):
            ended += 1
    config = run.config()
    if lost and config.baseline:  # the lost trial may have been the baseline: it gets another go
        with _enqueue_lock(run):
            enqueue_baseline(study, config)
    return None if n_trials is None else max(0, n_trials - ended)


def run_worker(run: StudyRun, index: int, n_trials: int | None,
               callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None) -> int:
    """One worker: its own sampler seed, the shared storage, ``n_trials`` trials (None: until timeout).

    With a ``run_id`` each trial is tagged with it and the worker's index, so that a worker started
    again runs only what it still owes (:func:`remaining_share`). Returns the trials it ran.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet_failed_trials()
    config = run.config()
    threads = run.threads or ((os.cpu_count() or 1) // run.workers if run.workers > 1 else None)
    if threads:  # share the cores: oversubscribed OpenMP threads slow every worker down many times
        import torch

        torch.set_num_threads(max(1, threads))
    study = open_study(run, config, config.seed)
    n_trials = remaining_share(study, run, index, n_trials)
    if n_trials == 0:
        return 0
    # Its own seed per worker, and per resumption, so no two workers replay the same suggestions.
    study.sampler = make_sampler(config, config.seed + 1000 * index + len(study.get_trials(deepcopy=False)))
    artifacts = artifact_store(run.storage)
    out_root = run.out(config)
    ran = 0

    def objective(trial: optuna.Trial) -> float | list[float]:
        nonlocal ran
        ran += 1
        if run.run_id is not None:
            trial.set_user_attr(RUN_ATTR, run.run_id)
            trial.set_user_attr(WORKER_ATTR, index)
            trial.set_user_attr(RAN_ON_ATTR, here())  # node, pid and GPUs: which job or task ran it
        try:
            return run_trial(trial, config, out_root, artifacts)
        finally:
            if run.run_id is not None:
                with contextlib.suppress(Exception):  # a lost storage: the trial's state says enough
                    trial.set_user_attr(ENDED_ATTR, True)

    study.optimize(objective, n_trials=n_trials, timeout=run.timeout_s, catch=(NonFiniteLossError,),
                   callbacks=callbacks or [], gc_after_trial=True)
    return ran


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
        from studies import cluster

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
    existing = _load(open_storage(run.storage, heartbeat_s=run.heartbeat_s, grace_s=run.grace_s), run.name(config))
    if existing is not None:
        check_existing(run, config, existing)  # before anything is written
    before = {t.number for t in existing.get_trials(deepcopy=False)} if existing is not None else set()
    ensure_data(config)
    study = open_study(run, config, config.seed)  # create it once, before the workers race to
    started = time.perf_counter()
    _quiet_failed_trials()

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
