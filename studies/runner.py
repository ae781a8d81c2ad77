"""Run a study: create or resume it in a storage, then optimise in one or several worker processes.

Each worker is an ordinary ``study.optimize`` loop against the shared storage with its own sampler
seed; there is no coordinator beyond Optuna's storage. ``n_trials`` is the number of trials this
invocation adds, split between the workers, so running the same command again adds as many more.
"""

from __future__ import annotations

import multiprocessing
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from nectargan.errors import NectarGANError
from nectargan.train import NonFiniteLossError
from studies.config import StudyConfig, load_study_config
from studies.objective import run_trial
from studies.storage import DEFAULT_STORAGE, HEARTBEAT_S, artifact_store, open_storage

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
STUDIES_ROOT = Path("results/studies")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


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


def open_study(run: StudyRun, config: StudyConfig, seed: int) -> optuna.Study:
    storage = open_storage(run.storage, heartbeat_s=run.heartbeat_s, grace_s=run.grace_s)
    name = run.name(config)
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None and [d.name.lower() for d in existing.directions] != config.directions:
        raise NectarGANError(
            f"study {name!r} in {run.storage} optimises {[d.name.lower() for d in existing.directions]}, "
            f"not {config.directions} ({', '.join(config.objectives)}); choose another study name"
        )
    study = optuna.create_study(
        storage=storage, study_name=name, directions=config.directions, sampler=make_sampler(config, seed),
        pruner=make_pruner(config), load_if_exists=True,
    )
    if existing is None:
        study.set_user_attr("objectives", config.objectives)
        study.set_user_attr("config", config.source)
        study.set_user_attr("config_sha256", config.sha256)
    return study


def _check_fixed_settings(config: StudyConfig) -> None:
    """Device and precision problems are config errors, not one failed trial after another."""
    from nectargan.train.config import TrainConfig, resolve

    resolve(TrainConfig(**{k: v for k, v in config.fixed.items() if k in ("device", "precision")}))


def _split(total: int | None, workers: int) -> list[int | None]:
    if total is None:
        return [None] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def run_worker(run: StudyRun, index: int, n_trials: int | None,
               callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None) -> None:
    """One worker: its own sampler seed, the shared storage, ``n_trials`` trials (None: until timeout)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = run.config()
    if run.workers > 1:  # share the cores: oversubscribed OpenMP threads slow every worker down many times
        import os

        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // run.workers))
    study = open_study(run, config, config.seed)
    # Its own seed per worker, and per resumption, so no two workers replay the same suggestions.
    study.sampler = make_sampler(config, config.seed + 1000 * index + len(study.get_trials(deepcopy=False)))
    artifacts = artifact_store(run.storage)
    out_root = run.out(config)
    study.optimize(
        lambda trial: run_trial(trial, config, out_root, artifacts),
        n_trials=n_trials, timeout=run.timeout_s, catch=(NonFiniteLossError,), callbacks=callbacks or [],
        gc_after_trial=True,
    )


def _worker_main(run: StudyRun, index: int, n_trials: int | None) -> None:
    run_worker(run, index, n_trials)


def run_study(run: StudyRun, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Prepare data and the study, run the workers, return a summary of what this invocation added."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = run.config()
    if run.workers < 1:
        raise NectarGANError(f"workers={run.workers} is not valid: use 1 or more")
    n_trials = run.n_trials if run.n_trials is not None else (None if run.timeout_s else config.n_trials)
    if n_trials is not None and n_trials < 1:
        raise NectarGANError(f"n_trials={n_trials} is not valid: use 1 or more")
    if run.heartbeat_s < 1:
        raise NectarGANError(f"heartbeat={run.heartbeat_s} is not valid: use 1 second or more")
    if run.timeout_s is not None and run.timeout_s <= 0:
        raise NectarGANError(f"timeout={run.timeout_s:g} is not valid: use a positive number of seconds")
    _check_fixed_settings(config)
    ensure_data(config)
    study = open_study(run, config, config.seed)  # create it once, before the workers race to
    before = {t.number for t in study.get_trials(deepcopy=False)}
    started = time.perf_counter()

    def progress(_study: optuna.Study | None = None, _trial: Any = None) -> None:
        if on_progress is None:
            return
        trials = [t for t in study.get_trials(deepcopy=False) if t.number not in before]
        finished = [t for t in trials if t.state in FINISHED]
        on_progress({"finished": len(finished), "total": n_trials, "running": len(trials) - len(finished),
                     "best": _best(study), "elapsed_s": time.perf_counter() - started})

    shares = _split(n_trials, run.workers)
    if run.workers == 1:
        progress()
        run_worker(run, 0, shares[0], callbacks=[progress])
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_worker_main, args=(run, i, share), daemon=False)
                     for i, share in enumerate(shares) if share != 0]
        for process in processes:
            process.start()
        try:
            while any(p.is_alive() for p in processes):
                progress()
                time.sleep(1.0)
        except KeyboardInterrupt:
            for process in processes:
                process.terminate()
            raise
        finally:
            for process in processes:
                process.join()
        progress()
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise NectarGANError(f"{len(failed)} worker process(es) exited with codes {failed}")
    trials = [t for t in study.get_trials(deepcopy=False) if t.number not in before]
    return {
        "study": study.study_name, "storage": run.storage, "added": len(trials),
        "states": {s.name: sum(1 for t in trials if t.state == s) for s in optuna.trial.TrialState
                   if any(t.state == s for t in trials)},
        "best": _best(study), "total_trials": len(study.trials),
    }


def _best(study: optuna.Study) -> str:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return "-"
    if len(study.directions) > 1:
        return f"{len(study.best_trials)} on the Pareto front"
    best = study.best_trial
    return f"{best.value:.4g} (trial {best.number})"
