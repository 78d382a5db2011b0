"""Where a search's Optuna study lives and how workers sharing it reserve trials: storage URLs (``journal:``,
``sqlite:///``, database servers), the cross-process lock (a file lock beside a local file, an advisory lock on
PostgreSQL and MySQL), ``open_storage``, and URLs made safe to log (``redact``) or usable (``with_driver``)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from suite import records
from suite.config import StudyError
from suite.names import OPTUNA_DB

log = logging.getLogger("spikesuite")

MAX_RETRY = 2  # a trial whose worker died is run again at most this often
# Our lock beside a journal/sqlite file (not "<file>.lock": that is the journal backend's own symlink lock).
LOCK_SUFFIX = ".spikesuite-lock"


def default_storage(study_dir: Path) -> str:
    return f"sqlite:///{study_dir / OPTUNA_DB}"


def redact(url: str) -> str:
    """The storage URL with any password hidden (it goes into logs and MLflow tags)."""
    if "://" in url and not url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        try:
            return make_url(url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unparsable URL is reported by the storage itself
            return url.split("@")[-1]
    return url


def with_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 picks psycopg 3 for it; where only psycopg2
    is installed (``psycopg2-binary``), use that one."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return url


class _FileLock:
    """An exclusive ``flock`` on a file beside a local storage (released by the OS if we die)."""

    def __init__(self, path: Path):
        self.path = path

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return records.file_lock(self.path)


class _DbLock:
    """A session-level advisory lock on a database server (PostgreSQL or MySQL), keyed by study name.
    One connection per process, kept open; the server releases the lock if the process dies."""

    def __init__(self, url: str, name: str):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        self.dialect = sqlalchemy.engine.make_url(url).get_backend_name()
        self.key = int.from_bytes(hashlib.sha256(f"spikesuite:{name}".encode()).digest()[:8], "big", signed=True)
        self.name = f"spikesuite:{hashlib.sha256(name.encode()).hexdigest()[:40]}"
        self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self._conn = None
        self._text = sqlalchemy.text

    def _sql(self, sql: str, **params: Any) -> None:
        if self._conn is None:
            self._conn = self._engine.connect()
        self._conn.execute(self._text(sql), params)
        self._conn.commit()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.dialect == "postgresql":
            self._sql("SELECT pg_advisory_lock(:k)", k=self.key)
            try:
                yield
            finally:
                self._sql("SELECT pg_advisory_unlock(:k)", k=self.key)
        else:  # mysql / mariadb
            self._sql("SELECT GET_LOCK(:n, 600)", n=self.name)
            try:
                yield
            finally:
                self._sql("SELECT RELEASE_LOCK(:n)", n=self.name)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._engine.dispose()


class _NoLock:
    """Other databases: no cross-process lock (two workers may then each start the last trial)."""

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        yield


@dataclass
class Storage:
    url: str  # as given (journal:..., sqlite:///..., postgresql://...)
    optuna: Any  # the optuna storage object
    lock: Any  # reserves trials atomically across workers
    local: bool  # a file on this machine: dead workers are found by process id (no heartbeat)
    heartbeat_s: int | None  # RDB servers: trials send heartbeats; stale ones are failed and retried

    def close(self) -> None:
        if isinstance(self.lock, _DbLock):
            self.lock.close()
        engine = getattr(self.optuna, "engine", None)
        if engine is not None:
            engine.dispose()


def open_storage(url: str, study_name: str, heartbeat_s: int) -> Storage:
    """``journal:<path>`` -> JournalStorage(JournalFileBackend) for several local processes (or a shared
    file system); ``sqlite:///<path>`` -> RDBStorage for one process (several work, slowly); any other
    database URL -> RDBStorage with heartbeats, so the trial of a killed worker is failed and retried."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not str(path) or str(path) == ".":
            raise StudyError("--storage", [f"{url!r}: give a file, e.g. journal:results/x/optuna.journal"])
        path = path.resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _FileLock(path.with_name(path.name + LOCK_SUFFIX))
        with lock.hold():
            storage = JournalStorage(JournalFileBackend(str(path)))
        return Storage(url, storage, lock, True, None)
    if url.startswith("sqlite:"):
        db = url.split(":///", 1)[-1] if ":///" in url else ""
        if not db or db == ":memory:":
            raise StudyError("--storage", [f"{url!r}: an in-memory database cannot be resumed or shared; "
                                           "give a file, sqlite:////abs/path/optuna.db"])
        path = Path(db).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = _FileLock(path.with_name(path.name + LOCK_SUFFIX))
        with lock.hold():  # table creation by two processes at once fails
            storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return Storage(url, storage, lock, True, None)
    if "://" not in url:
        raise StudyError("--storage", [f"{url!r}: expected journal:<path>, sqlite:///<path> or a database URL "
                                       "such as postgresql://user@host/db"])
    url = with_driver(url)
    try:
        lock: Any = _DbLock(url, study_name)
        if lock.dialect not in ("postgresql", "mysql", "mariadb"):
            lock.close()
            lock = _NoLock()
            log.warning("storage %s: no cross-process lock for this database; concurrent workers may run "
                        "one trial more than n_trials", redact(url))
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver is bad input
        raise StudyError("--storage", [f"{redact(url)}: {type(exc).__name__}: {exc}"]) from None
    with warnings.catch_warnings(), lock.hold():  # serialise table creation between workers
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = RDBStorage(url, heartbeat_interval=heartbeat_s,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    return Storage(url, storage, lock, False, heartbeat_s)
