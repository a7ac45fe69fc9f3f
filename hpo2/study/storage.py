"""Where a study's trials live: the Optuna storage for a URL, and the lock that
serializes the first creation of a study's tables by workers starting together
(on one machine or, with PostgreSQL, on several).

Any Optuna URL works.  RDB storages (sqlite, PostgreSQL) get a heartbeat, so a
trial whose worker was killed is marked failed and retried by the next run
(``RetryHeartbeatStaleTrialCallback``); ``journal:PATH`` opens a journal file
(several processes on one machine, no heartbeat).  The file checks made before
anything is written live in :mod:`hpo2.databases`.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from hpo2.study.config import StudyConfig, storage_error
from hpo2.study.locks import file_lock, lock_key, url_advisory_lock


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

            return RDBStorage(
                url,
                heartbeat_interval=config.heartbeat_interval,
                grace_period=2 * config.heartbeat_interval,
                heartbeat_stale_trial_callback=stale,
            )
        return url
    except Exception as exc:  # any driver error: the user's URL is wrong or unreachable
        raise storage_error(url, exc) from None


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
