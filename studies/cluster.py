"""Study workers on a cluster: K worker jobs (Slurm) or tasks (Ray) sharing one Optuna storage.

Each worker is :func:`studies.worker.run_worker`, as on one machine; the storage is the only
coordinator, so it must be one that every node reaches (:func:`studies.storage.check_cluster_storage`).
The study is created, and its baseline enqueued, by the driver before anything is submitted. A
worker that is lost (a killed process, a lost node, a preempted job) is started again by its engine
with the same index; it then marks its own dead trial FAIL and runs only the trials it still owes,
so a study of N trials ends with N trials that ran to their end and none left RUNNING.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.executors import LOGS_DIR, ExecutorConfig, Outcome, check_gpus, engine, here, remote_device
from bench.executors.jobs import enter
from nectargan.errors import NectarGANError
from nectargan.runtime import Device
from studies.config import StudyConfig
from studies.storage import check_cluster_storage
from studies.worker import StudyRun, run_worker


@dataclass(frozen=True)
class StudyWorker:
    """Worker ``index`` of a study run, owing ``n_trials`` (None: until the run's timeout)."""

    run: StudyRun
    index: int
    n_trials: int | None
    cwd: str | None = None

    def __call__(self) -> dict[str, Any]:
        enter(self.cwd)
        run = self.run
        if run.threads is None:  # the cores this Slurm job was given (Slurm sets the affinity)
            run = dataclasses.replace(run, threads=len(os.sched_getaffinity(0)))
        return {"worker": self.index, "ran": run_worker(run, self.index, self.n_trials), **here()}


def prepare_run(run: StudyRun, config: StudyConfig, executor: ExecutorConfig) -> StudyRun:
    """Check what a cluster run needs before anything is written (the engine is installed, Slurm is
    there, the device and storage suit several nodes); return the run as every worker sees it: a
    shared storage URL, absolute folders, a run id tagging its trials, threads per worker."""
    storage = check_cluster_storage(run.storage, executor.kind)
    device = str(config.fixed.get("device", "auto"))
    if Device.parse(device).kind != "auto":
        remote_device(device, executor.kind)
    engine(executor.kind).check_available(executor, gpus_per_worker(config, executor))
    out_root = str(run.out(config).resolve())
    config_path = str(Path(run.config_path).resolve()) if Path(run.config_path).exists() else run.config_path
    # threads: Ray reserves cpus_per_task (default 1) cores a task and lets several share a node
    threads = executor.cpus_per_task or (1 if executor.kind == "ray" else run.threads)
    return dataclasses.replace(run, config_path=config_path, storage=storage, out_root=out_root,
                               run_id=run.run_id or uuid.uuid4().hex[:12], threads=threads)


def gpus_per_worker(config: StudyConfig, executor: ExecutorConfig) -> int:
    """GPUs per worker: one unless the study runs on the CPU. ``auto`` means a GPU on Slurm (the login node
    cannot see the compute nodes) and on a Ray cluster that has GPUs; on a Ray cluster without any, the CPU."""
    device = Device.parse(str(config.fixed.get("device", "auto")))
    if device.kind == "auto":
        if executor.kind == "ray" and executor.gpus_per_task is None:
            from bench.executors import ray as ray_engine

            return 1 if ray_engine.cluster_gpus(executor) > 0 else 0
        return executor.gpus("cuda")
    return check_gpus(executor, device.kind)


def run_workers(run: StudyRun, config: StudyConfig, executor: ExecutorConfig, shares: list[int | None],
                progress: Callable[[], None]) -> list[Outcome] | None:
    """Start one worker per non-empty share on the executor and wait for them (None: detached). A Slurm
    worker job that is cancelled while this waits is submitted again, as a failed one is: the study owes its
    trials, and the restarted worker fails its lost trial and runs only what it still owes. To stop the
    workers, interrupt this command (it cancels them), or scancel them after a detach."""
    calls = [StudyWorker(run, i, share, os.getcwd()) for i, share in enumerate(shares) if share != 0]
    module = engine(executor.kind)
    gpus = gpus_per_worker(config, executor)
    if executor.kind == "slurm":  # Ctrl-C cancels the workers, so that the same command can continue the study
        return module.run_calls(calls, executor, Path(run.out(config)) / LOGS_DIR, f"nectargan-{run.name(config)}",
                                gpus, on_poll=progress, cancel_on_interrupt=True, retry_cancelled=True)
    return module.run_calls(calls, executor, gpus, on_poll=progress)


def check_outcomes(outcomes: list[Outcome]) -> None:
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise NectarGANError(f"{len(failed)} worker(s) failed: " + "; ".join(
            f"worker {o.index}: {o.reason}" for o in failed))
