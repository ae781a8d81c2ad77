"""One study worker: open the shared study (creating it, with its baseline, when it is new) and optimise.

Each worker is an ordinary ``study.optimize`` loop against the shared storage with its own sampler
seed; there is no coordinator beyond Optuna's storage. The process that creates the study enqueues
the baseline (:mod:`studies.baseline`), so it is trial 0. An existing study is checked against the
config before anything is written: the same directions and a compatible space
(:func:`studies.space.check_against_study`).

:mod:`studies.runner` starts workers in this process or in forked ones, :mod:`studies.cluster` as
cluster jobs or Ray tasks; both import :class:`StudyRun` and :func:`run_worker` from here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bench.executors import here
from nectargan.errors import NectarGANError
from nectargan.train import NonFiniteLossError
from studies.baseline import baseline_settings, enqueue_baseline, why_no_baseline
from studies.config import StudyConfig, load_study_config
from studies.objective import run_trial
from studies.space import check_against_study
from studies.storage import DEFAULT_STORAGE, HEARTBEAT_S, artifact_store, file_lock, open_storage, sqlite_path

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
STUDIES_ROOT = Path("results/studies")


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


def load_existing(storage: optuna.storages.BaseStorage, name: str, **kwargs) -> optuna.Study | None:
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
    floor = attrs.get("floor")  # recorded with the dataset it was computed on (studies.floor)
    if isinstance(floor, dict) and floor.get("data") and floor["data"] != config.data_path:
        raise NectarGANError(f"{where} trained on the dataset {floor['data']!r}, this config says "
                             f"{config.data_path!r}{hint}")
    check_against_study(study, config.space, config.source)


def open_study(run: StudyRun, config: StudyConfig, seed: int) -> optuna.Study:
    """Create the study (and enqueue its baseline) or load and check it.

    Creation is atomic in every Optuna storage (the name is unique), so of several processes that
    start at once exactly one creates the study and enqueues the baseline.
    """
    storage = open_storage(run.storage, heartbeat_s=run.heartbeat_s, grace_s=run.grace_s)
    name = run.name(config)
    options = {"sampler": make_sampler(config, seed), "pruner": make_pruner(config)}
    study = load_existing(storage, name, **options)
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
    if config.description:  # the report opens with it (e.g. "A smoke test, not an answer: ...")
        study.set_user_attr("description", config.description)
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
    quiet_failed_trials()
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


def quiet_failed_trials() -> None:
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoTracebacks) for f in logger.filters):
        logger.addFilter(_NoTracebacks())
