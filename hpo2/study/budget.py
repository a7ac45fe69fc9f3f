"""An exact trial budget shared by every worker of a study.

Optuna's ``n_trials`` counts per process, so N workers each told "24" run up to
24 x N trials, and a callback that stops at 24 races with the others.  Here a
worker admits a new trial only inside a lock that all workers share -- a
PostgreSQL advisory lock for PostgreSQL storage, an ``fcntl`` lock on a file
beside a sqlite database or journal file -- and releases it as soon as the trial
exists in storage.  Counted are the running and finished trials, failed ones
included, except a failed trial that is being retried (its retry, a new trial
from the heartbeat callback or from an interruption, takes its place); waiting
trials (enqueued defaults and retries) are not counted and run first, inside the
budget, because ``study.ask`` pops them before it samples.

Before counting, still under the lock, the trials whose worker stopped beating
are failed (:func:`optuna.storages.fail_stale_trials`, which runs the storage's
retry callback): otherwise a killed worker's trial would stay RUNNING, fill the
budget, and Optuna's own stale check -- which runs only inside
``study.optimize`` -- would never be reached.  A trial that is RUNNING but not
yet stale keeps the budget full; :meth:`TrialBudget.admit` then answers
:attr:`Admission.WAIT` and the worker polls until the trial finishes or its
heartbeat expires (RDB storages only: a journal has no heartbeat).
"""

from __future__ import annotations

import enum
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from hpo2.study.locks import study_lock


class Admission(enum.Enum):
    """What :meth:`TrialBudget.admit` decided."""

    ADMITTED = "admitted"  # the lock is held until release()
    FULL = "full"  # the budget is spent: stop
    WAIT = "wait"  # full only because of running trials that may still go stale: ask again later


def retried_trial_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the trials that a later trial retries (Optuna's ``retry_history``
    system attribute lists every earlier attempt, also of a retry that was retried)."""
    return {number for t in trials for number in t.system_attrs.get("retry_history", ())}


class TrialBudget:
    """Admit trials while fewer than ``limit`` trials count (see the module docstring)."""

    def __init__(self, study: optuna.Study, storage_url: str, limit: int | None) -> None:
        self.study = study
        self.url = storage_url
        self.limit = limit
        self._thread_lock = threading.Lock()
        self._release: list = []

    def counted(self) -> int:
        return len(self._counted_trials(self.study.get_trials(deepcopy=False)))

    @staticmethod
    def _counted_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        retried = retried_trial_numbers(trials)
        return [
            t
            for t in trials
            if t.state != TrialState.WAITING and not (t.state == TrialState.FAIL and t.number in retried)
        ]

    @property
    def heartbeat(self) -> bool:
        """Whether the storage beats for running trials (RDB storages), so a dead one goes stale."""
        return is_heartbeat_enabled(self.study._storage)

    def fail_stale(self) -> None:
        """Fail (and, through the storage's callback, retry) the trials whose worker stopped beating."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fail_stale_trials(self.study)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The lock every worker of the study shares (not this process's threads' lock):
        held while trials are counted, failed as stale or retried."""
        with study_lock(self.study, self.url, "budget"):
            yield

    def admit(self) -> Admission:
        """Take the shared lock, fail stale trials, count; ADMITTED (lock held until
        :meth:`release`) if another trial fits the budget, else FULL or WAIT (lock released)."""
        self._thread_lock.acquire()
        held = self.locked()
        held.__enter__()
        try:
            self.fail_stale()
            counted = self._counted_trials(self.study.get_trials(deepcopy=False))
        except BaseException:
            held.__exit__(None, None, None)
            self._thread_lock.release()
            raise
        if self.limit is not None and len(counted) >= self.limit:
            held.__exit__(None, None, None)
            self._thread_lock.release()
            running = any(t.state == TrialState.RUNNING for t in counted)
            return Admission.WAIT if running and self.heartbeat else Admission.FULL
        self._release.append(held)
        return Admission.ADMITTED

    def release(self) -> None:
        """Release the lock once the admitted trial exists in storage (idempotent)."""
        if self._release:
            self._release.pop().__exit__(None, None, None)
            self._thread_lock.release()
