"""Where a study's trials live: the Optuna storage for a URL, and the lock that
serializes the first creation of a study's tables by workers starting together
(on one machine or, with PostgreSQL, on several).

Any Optuna URL works.  RDB storages (sqlite, PostgreSQL) get a heartbeat, so a
trial whose worker was killed is marked failed and retried by the next run
(``RetryHeartbeatStaleTrialCallback``); ``journal:PATH`` opens a journal file
(several processes on one machine, no heartbeat).  The file checks made before
anything is written live in :mod:`hpo2.common.databases`.

A database server that restarts, or drops a connection, under a running study is
a *storage fault*, not a result (:func:`is_storage_fault`).  The storage rides it
out (:class:`PatientRDBStorage`): pooled connections are checked before use
(``pool_pre_ping``, so one the restart closed is replaced, not used), a new
connection is retried until the server answers again (for
:data:`STORAGE_PATIENCE_SECONDS`), and a heartbeat that fails is skipped, not fatal
to the trial.  What still fails mid-statement is handled by the runner: the trial
is failed as a fault and retried (:func:`hpo2.study.recovery.retry_faulted_trial`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.pool import NullPool

from hpo2.common.databases import local_file
from hpo2.common.redact import redact_text, redact_url
from hpo2.errors import SettingsError
from hpo2.study.config import StudyConfig, storage_error
from hpo2.study.locks import file_lock, lock_key, url_advisory_lock

#: how long a worker waits for its database server to answer again (a restart takes seconds)
STORAGE_PATIENCE_SECONDS = 120.0
#: storage faults in a row after which a worker stops (one that fails every trial is no passing fault)
MAX_STORAGE_FAULTS = 3
#: heartbeat intervals a running trial may stay silent before it is stale (its worker is taken for dead)
GRACE_HEARTBEATS = 2

_log = logging.getLogger(__name__)


def is_storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` comes from losing the storage's database, not from the trial or
    its data: a connection-level driver error (SQLAlchemy's ``OperationalError`` or
    ``InterfaceError`` -- refused, closed, shutting down, sqlite's lock timeout -- or
    any error that invalidated its connection) anywhere in its chain of causes and
    contexts (Optuna wraps it in ``StorageInternalError``, and may raise another
    error while handling it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def no_space_left(exc: BaseException) -> OSError | None:
    """The "No space left on device" error anywhere in ``exc``'s chain of causes and
    contexts, if any: Optuna's journal storage hits it writing a trial's state and then
    fails its own ``assert False, "Should not reach."`` while handling it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return current
        current = current.__cause__ or current.__context__
    return None


def storage_fault_reason(exc: BaseException) -> str:
    """``ErrorType: first line`` of the driver error behind a storage fault (``exc`` itself when there is none)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError):
            driver = current.orig if current.orig is not None else current
            first_line = (str(driver).strip().splitlines() or [""])[0]
            return f"{type(driver).__name__}: {first_line}"
        current = current.__cause__ or current.__context__
    return f"{type(exc).__name__}: {exc}"


class StorageLost(RuntimeError):
    """The storage kept failing (:data:`MAX_STORAGE_FAULTS` faults in a row): the worker stops."""


class PatientRDBStorage(RDBStorage):
    """Optuna's RDB storage that rides out a restart of its database server (module docstring).

    Constructed like :class:`~optuna.storages.RDBStorage`; the first connection (made
    here) must succeed, so a wrong URL still fails at once.  Afterwards a connection
    that cannot be made is retried for ``patience`` seconds (server databases only: a
    sqlite file has no server to wait for)."""

    def __init__(self, url: str, patience: float = STORAGE_PATIENCE_SECONDS, **kwargs: Any) -> None:
        super().__init__(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
        if not url.startswith("sqlite"):
            event.listen(self.engine, "do_connect", _connect_patiently(url, patience))

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a beat; a storage fault skips this one (Optuna's heartbeat thread would
        die of it, and the living trial would later be failed as stale)."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            _log.warning("trial heartbeat skipped: the storage did not answer (%s)", type(exc).__name__)


def _connect_patiently(url: str, patience: float) -> Callable[..., Any]:
    """A ``do_connect`` hook that retries a refused connection, waiting up to
    ``patience`` seconds (delays 0.25 s doubling to 1 s, so heartbeats resume soon after the
    server does), then lets the last error through."""

    def connect(dialect: Dialect, conn_rec: Any, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        deadline = time.monotonic() + patience
        delay, warned = 0.25, False
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if not warned:
                    first_line = (str(exc).strip().splitlines() or [""])[0]
                    _log.warning("storage %s is not answering (%s); waiting up to %.0f s for it",
                                 redact_url(url), redact_text(first_line, url), patience)
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    return connect


#: the tables every Optuna RDB storage has (an MLflow store, say, has none of them)
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
#: the tables that make a database an MLflow tracking store
MLFLOW_TABLES = frozenset({"experiments", "runs"})


def open_read_only(url: str, field: str) -> optuna.storages.BaseStorage:
    """The existing Optuna storage at ``url`` (the study file's ``field``), opened so
    that nothing is written to it: a sqlite file through a read-only connection
    (``mode=ro``), PostgreSQL in read-only transactions, no table created nor version
    stamped; a journal file is only read.  A database without Optuna's tables (an
    ``mlflow.db``, say) is refused before Optuna touches it.

    Raises :class:`SettingsError` naming ``field`` and the URL (password masked) for a
    file that does not exist, a database that is not an Optuna storage, or one that
    cannot be opened."""
    shown = redact_url(url)
    local = local_file(url)
    if local is not None and not local.is_file():
        raise SettingsError(f"{field} = {shown!r}: no such file; give an existing Optuna storage")
    try:
        journal = open_journal(url)
        if journal is not None:
            return journal
        engine_kwargs = _read_only_engine_kwargs(url)
        tables = _table_names(url, engine_kwargs)
        if tables >= OPTUNA_TABLES:
            return RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=True)
    except Exception as exc:  # any driver error: wrong URL, server down, not a database at all
        raise storage_error(url, exc, field, hint="") from None
    what = "an MLflow tracking store" if tables >= MLFLOW_TABLES else "a database without Optuna's tables"
    raise SettingsError(f"{field} = {shown!r} is not an Optuna storage (it is {what}); give a study's Optuna "
                        "storage, such as the <name>.optuna.db beside its study file; nothing was written to it")


def _read_only_engine_kwargs(url: str) -> dict[str, Any]:
    """``create_engine`` arguments that make every connection to ``url`` read-only (sqlite, PostgreSQL)."""
    if url.startswith("sqlite"):
        database = make_url(url).database or ""
        return {"creator": lambda: sqlite3.connect(f"file:{quote(database)}?mode=ro", uri=True)}
    if url.startswith("postgresql"):
        return {"connect_args": {"options": "-c default_transaction_read_only=on"}}
    return {}


def _table_names(url: str, engine_kwargs: dict[str, Any]) -> set[str]:
    engine = create_engine(url, poolclass=NullPool, **engine_kwargs)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def open_journal(url: str) -> optuna.storages.BaseStorage | None:
    """A ``journal:PATH`` URL as Optuna's journal-file storage (several processes on
    one machine, no heartbeat); None for any other URL."""
    if not url.startswith("journal:"):
        return None
    return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))


StaleTrialHook = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def open_storage(
    url: str, config: StudyConfig, on_stale: StaleTrialHook | None = None
) -> optuna.storages.BaseStorage | str:
    """An Optuna storage for ``url``; RDB URLs get heartbeats and stale-trial retry
    (``on_stale`` runs too, for each trial whose worker stopped beating).
    ``journal:PATH`` opens a journal file (several processes on one machine, no heartbeat)."""
    try:
        journal = open_journal(url)
        if journal is not None:
            return journal
        if "://" in url and not url.startswith(("redis", "grpc")):
            retry = RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry)

            def stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                retry(study, trial)
                if on_stale is not None:
                    on_stale(study, trial)

            return PatientRDBStorage(
                url,
                heartbeat_interval=config.heartbeat_interval,
                grace_period=GRACE_HEARTBEATS * config.heartbeat_interval,
                heartbeat_stale_trial_callback=stale,
            )
        return url
    except Exception as exc:  # any driver error: the user's URL is wrong or unreachable
        raise storage_error(url, exc) from None


def stale_trial_numbers(study: optuna.Study, url: str, config: StudyConfig) -> set[int]:
    """The RUNNING trials of ``study`` (in the RDB storage at ``url``) silent past their
    heartbeat's grace period, judged as :func:`open_storage`'s storage does, without
    failing them; empty for a storage without heartbeats (a journal file) and for
    trials that never beat (they cannot be told from a trial just started)."""
    if "://" not in url or url.startswith(("redis", "grpc")):
        return set()
    storage = RDBStorage(url, heartbeat_interval=config.heartbeat_interval, skip_table_creation=True,
                         grace_period=GRACE_HEARTBEATS * config.heartbeat_interval)  # fmt: skip
    try:
        stale = set(storage._get_stale_trial_ids(study._study_id))
    finally:
        storage.engine.dispose()
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t._trial_id in stale}


@contextmanager
def study_init_lock(storage_url: str, study_file: Path, name: str) -> Iterator[None]:
    """Held while a worker creates or loads the study, its tables and its MLflow
    parent run, and while it enqueues the study's first configurations (paper
    defaults, warm start), so workers starting together do each once.

    PostgreSQL storage: an advisory lock in that database, shared by workers on
    every machine (creating Optuna's tables from two sessions at once fails with a
    duplicate-key error on PostgreSQL's catalog).  Otherwise a lock file in the temp
    folder, one per study file and name (the study's own folder stays clean)."""
    if storage_url.startswith("postgresql"):
        with ExitStack() as held:
            try:
                held.enter_context(url_advisory_lock(storage_url, lock_key(f"hpo2-init:{name}")))
            except Exception as exc:  # any driver error: the user's URL is wrong or unreachable
                raise storage_error(storage_url, exc) from None
            yield
        return
    digest = hashlib.sha256(f"{study_file.resolve()}:{name}".encode()).hexdigest()[:16]
    with file_lock(Path(tempfile.gettempdir()) / f"hpo2-init-{digest}.lock"):
        yield
