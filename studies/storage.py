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

Waiting (enqueued) trials: Optuna hands one out by reading its state and then setting it RUNNING.
PostgreSQL and MySQL lock the row in between (``SELECT ... FOR UPDATE``) and the journal applies
operations in order, but SQLite has no row locks, so two processes can both take the same waiting
trial and train it twice. On SQLite that hand-out is therefore done under an exclusive lock on a file
beside the database (``FILE.db.lock``), which serialises it between the processes of one machine.

Optuna creates its tables the first time a storage is opened, and leaves concurrent first use to the
caller (optuna/optuna#1092): several workers opening one empty PostgreSQL database at once meet
``UniqueViolation`` or ``DuplicateObject``. Here PostgreSQL and MySQL storages are opened while holding
a lock that the database itself holds (``pg_advisory_lock``; MySQL's ``GET_LOCK``), taken on a
connection of its own: the first opener creates the schema, the others wait and find it there.

Read-only commands (``study-report``, ``dashboard``) open with ``must_exist=True``: a missing file is
an error instead of a new empty database, and no tables are created.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

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


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URL (None for other storages and in-memory SQLite)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):])
    return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if needed): one holder per machine at a time."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LockedSQLiteStorage(RDBStorage):
    """RDBStorage on SQLite whose hand-out of waiting trials holds a lock file (see the module docstring)."""

    def __init__(self, url: str, lock_path: Path, **kwargs) -> None:
        super().__init__(url, **kwargs)
        self.lock_path = lock_path

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with file_lock(self.lock_path):  # re-read and set under the lock: the second taker sees RUNNING
            return super().set_trial_state_values(trial_id, state, values)


def open_storage(
    url: str = DEFAULT_STORAGE, heartbeat_s: int = HEARTBEAT_S, grace_s: int | None = None,
    must_exist: bool = False,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring).

    Folders for files are created, unless ``must_exist``: then a missing file is a
    :class:`StorageError` and nothing is created (read-only commands).
    """
    journal = _journal_path(url)
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        if must_exist and not journal.is_file():
            raise StorageError(f"storage file {journal} does not exist (storage {url!r}); run a study first")
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    database = sqlite_path(url)
    if database is not None:
        if must_exist and not database.is_file():
            raise StorageError(f"storage file {database} does not exist (storage {url!r}); run a study first")
        database.parent.mkdir(parents=True, exist_ok=True)
    elif not url.startswith(("postgresql", "mysql", "sqlite")):
        raise StorageError(
            f"storage {url!r} is not valid: use sqlite:///FILE.db, journal:FILE.log or postgresql://USER@HOST/DB"
        )
    kwargs = {
        "heartbeat_interval": heartbeat_s,
        "grace_period": grace_s if grace_s is not None else max(GRACE_S, 3 * heartbeat_s),
        "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        "engine_kwargs": {"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        "skip_table_creation": must_exist,
    }
    try:
        if database is not None:
            return LockedSQLiteStorage(url, database.with_name(database.name + ".lock"), **kwargs)
        if must_exist:
            _check_holds_studies(url)
        with schema_lock(url):
            return RDBStorage(url, **kwargs)
    except StorageError:
        raise
    except Exception as exc:  # sqlalchemy raises many types for an unreachable or bad database
        raise StorageError(_cannot_open(url, exc)) from None


def _check_holds_studies(url: str) -> None:
    """A read-only command on a database server: refuse, in words, a database without Optuna's tables."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            if not sqlalchemy.inspect(connection).has_table("studies"):
                raise StorageError(f"no study there: database {engine.url.database!r} of storage "
                                   f"{engine.url.render_as_string(hide_password=True)!r} holds no Optuna tables; "
                                   "run a study there first")
    finally:
        engine.dispose()


def _cannot_open(url: str, exc: Exception) -> str:
    """One line for a database that cannot be opened: a missing database said as such, else the driver's words."""
    import sqlalchemy

    message = " ".join(str(exc).split())
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # an unparsable URL: the driver's words are all there is
        parsed = None
    if parsed is not None and parsed.database and f'database "{parsed.database}" does not exist' in message:
        where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        return (f"database {parsed.database!r} does not exist on {where} (storage "
                f"{parsed.render_as_string(hide_password=True)!r}); check the URL, or create it (createdb "
                f"{parsed.database}) and run a study there")
    message = message.split(" (Background on this error")[0][:300]
    return f"storage {url!r} cannot be opened: {type(exc).__name__}: {message}"


SCHEMA_LOCK_KEY = 0x6E6563746172  # any 64-bit number of ours: PostgreSQL's advisory lock on schema creation
SCHEMA_LOCK_WAIT_S = 120


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold the database's own lock on Optuna's schema while the caller opens (and maybe creates) it.

    PostgreSQL: a session advisory lock; MySQL: ``GET_LOCK``. Other URLs: no lock. The lock lives on a
    separate connection, released (and closed) at the end, so a crashed holder never leaves it behind.
    """
    if not url.startswith(("postgresql", "mysql")):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    postgres = url.startswith("postgresql")
    try:
        with engine.connect() as connection:
            if postgres:
                connection.execute(sqlalchemy.text(f"SET lock_timeout = '{SCHEMA_LOCK_WAIT_S}s'"))
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            else:
                got = connection.execute(sqlalchemy.text("SELECT GET_LOCK('optuna_schema', :wait)"),
                                         {"wait": SCHEMA_LOCK_WAIT_S}).scalar()
                if got != 1:
                    raise StorageError(f"storage {url!r}: another process held the schema lock for over "
                                       f"{SCHEMA_LOCK_WAIT_S} s; try again")
            connection.commit()
            try:
                yield
            finally:
                unlock = "SELECT pg_advisory_unlock(:key)" if postgres else "SELECT RELEASE_LOCK('optuna_schema')"
                connection.execute(sqlalchemy.text(unlock), {"key": SCHEMA_LOCK_KEY} if postgres else {})
                connection.commit()
    finally:
        engine.dispose()


def check_cluster_storage(url: str, executor: str) -> str:
    """The storage URL for workers on several machines: PostgreSQL/MySQL as given, a journal file as an
    absolute path (it must lie on a file system every node mounts); SQLite is refused, since its
    locking does not work across machines. Nothing is opened or created."""
    journal = _journal_path(url)
    if journal is not None:
        return f"journal:{journal.resolve()}"
    if url.startswith(("postgresql", "mysql")):
        return url
    if url.startswith("sqlite"):
        raise StorageError(f"storage {url!r} is a SQLite file, which workers on several machines cannot share; with "
                           f"executor {executor!r} use postgresql://USER@HOST/DB or journal:/shared/path/study.log")
    raise StorageError(f"storage {url!r} is not valid: use postgresql://USER@HOST/DB or journal:/shared/path/study.log")


def artifact_dir(url: str) -> Path:
    """The artifact folder that goes with a storage: beside a file storage, else results/artifacts."""
    journal = _journal_path(url)
    if journal is not None:
        return journal.with_name(journal.stem + "-artifacts")
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        return db.with_name(db.stem + "-artifacts")
    return Path(os.environ.get("NECTARGAN_BENCH_ARTIFACTS", "results/artifacts"))


def artifact_store(url: str, directory: Path | None = None,
                   create: bool = True) -> optuna.artifacts.FileSystemArtifactStore:
    """The artifact store of ``url`` (``create=False``: do not create a missing folder, for readers)."""
    folder = directory or artifact_dir(url)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(folder))
