"""Where studies live: Optuna's own storages, chosen by a URL, plus the artifact folder beside them.

* ``sqlite:///results/studies.db`` (default): one file, ready for optuna-dashboard; fine for one
  process, workable for a few;
* ``journal:results/studies.log`` (or any path ending in ``.log``/``.journal``): Optuna's journal
  file, safe for several processes on one machine;
* ``postgresql://user@host/db`` (or mysql): several machines, each running the same command against
  the same database. Optuna's RDB storage is the coordinator.

RDB storages get heartbeats: a trial whose worker died is marked FAIL once its heartbeat is older
than the grace period, and a retry callback re-queues it with the same parameters. Optuna's journal
storage has no heartbeat, so a killed worker's trial there stays RUNNING until failed by hand.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from nectargan.errors import NectarGANError

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
DEFAULT_STORAGE = "sqlite:///results/studies.db"
HEARTBEAT_S = 10
GRACE_S = 30
MAX_RETRY = 2


class StorageError(NectarGANError, ValueError):
    """A storage URL that cannot be used."""


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if "://" not in url and url.endswith((".log", ".journal")):
        return Path(url)
    return None


def open_storage(
    url: str = DEFAULT_STORAGE, heartbeat_s: int = HEARTBEAT_S, grace_s: int | None = None
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring); folders for files are created."""
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif not url.startswith(("postgresql", "mysql", "sqlite")):
        raise StorageError(
            f"storage {url!r} is not valid: use sqlite:///FILE.db, journal:FILE.log or postgresql://USER@HOST/DB"
        )
    try:
        return RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s if grace_s is not None else max(GRACE_S, 3 * heartbeat_s),
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )
    except Exception as exc:  # sqlalchemy raises many types for an unreachable or bad database
        message = " ".join(str(exc).split())[:300]
        raise StorageError(f"storage {url!r} cannot be opened: {type(exc).__name__}: {message}") from None


def artifact_dir(url: str) -> Path:
    """The artifact folder that goes with a storage: beside a file storage, else results/artifacts."""
    journal = _journal_path(url)
    if journal is not None:
        return journal.with_name(journal.stem + "-artifacts")
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        return db.with_name(db.stem + "-artifacts")
    return Path(os.environ.get("NECTARGAN_BENCH_ARTIFACTS", "results/artifacts"))


def artifact_store(url: str, directory: Path | None = None) -> optuna.artifacts.FileSystemArtifactStore:
    folder = directory or artifact_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(folder))
