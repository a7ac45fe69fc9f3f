"""An exact trial budget shared by every worker of a study.

Optuna's ``n_trials`` counts per process, so N workers each told "24" run up to
24 x N trials, and a callback that stops at 24 races with the others.  Here a
worker admits a new trial only inside a lock that all workers share -- a
PostgreSQL advisory lock for PostgreSQL storage, an ``fcntl`` lock on a file
beside a sqlite database or journal file -- and releases it as soon as the trial
exists in storage.  Counted are the running and finished trials, failed ones
included, except a failed trial that is being retried (its retry, a new trial
from the heartbeat callback, takes its place); waiting trials (enqueued
defaults and retries) run first, inside the budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy import text


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` held for the block (processes on one machine)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_file_for(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):] + ".hpo2-budget.lock")
    if url.startswith("journal:"):
        return Path(url[len("journal:"):] + ".hpo2-budget.lock")
    return None


class TrialBudget:
    """Admit trials while fewer than ``limit`` trials count (see the module docstring)."""

    def __init__(self, study: optuna.Study, storage_url: str, limit: int | None) -> None:
        self.study = study
        self.url = storage_url
        self.limit = limit
        self._thread_lock = threading.Lock()
        self._key = int.from_bytes(hashlib.sha256(f"hpo2:{study.study_name}".encode()).digest()[:7], "big")
        self._release: list = []

    def counted(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
        return sum(
            t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and t.number in retried) for t in trials
        )

    @contextmanager
    def _storage_lock(self) -> Iterator[None]:
        if self.url.startswith("postgresql"):
            engine = self.study._storage._backend.engine if hasattr(self.study._storage, "_backend") else self.study._storage.engine
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                    conn.commit()
            return
        lock_file = _lock_file_for(self.url)
        if lock_file is None:
            yield
            return
        with file_lock(lock_file):
            yield

    def admit(self) -> bool:
        """Take the shared lock; True (lock held until :meth:`release`) if another trial
        fits the budget, else False (lock released)."""
        self._thread_lock.acquire()
        held = self._storage_lock()
        held.__enter__()
        if self.limit is not None and self.counted() >= self.limit:
            held.__exit__(None, None, None)
            self._thread_lock.release()
            return False
        self._release.append(held)
        return True

    def release(self) -> None:
        """Release the lock once the admitted trial exists in storage (idempotent)."""
        if self._release:
            self._release.pop().__exit__(None, None, None)
            self._thread_lock.release()
