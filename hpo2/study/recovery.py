"""Lost or stopped work: Ctrl-C and SIGTERM, trials to retry, MLflow runs left open.

* **Stop requests.** The first SIGINT (Ctrl-C) or SIGTERM only sets a flag
  (:class:`StopRequest`); a trial checks it at safe points -- after each training
  step, at each evaluation, between its start and its MLflow run -- and raises
  :class:`TrialInterrupted`, so no signal lands inside a database write.  The
  interrupted trial is failed and retried (:func:`retry_trial`), its MLflow run and
  the study's parent run end KILLED with ``hpo2.reason = interrupted``.  A second
  signal raises ``KeyboardInterrupt`` at once (a hard stop, recovered later like a
  killed worker).
* **Retry.** A retried trial is a WAITING copy with the same params and Optuna's
  ``failed_trial`` / ``retry_history`` system attributes (what
  ``RetryHeartbeatStaleTrialCallback`` writes for a stale trial), so the trial
  budget stops counting the failed one and the paper defaults are evaluated.
* **Storage faults.** A trial whose storage failed under it (a database restart, a
  dropped connection: :func:`hpo2.study.storage.is_storage_fault`) raises
  :class:`TrialStorageFault`; the worker fails it and retries it at once
  (:func:`retry_faulted_trial`), and goes on with the next trial.
* **MLflow agrees with Optuna** (:func:`close_orphan_runs`): a trial run still
  RUNNING in MLflow whose Optuna trial is not RUNNING lost its worker; it is ended
  KILLED with the reason.  This covers a kill between the run's creation and the
  trial's ``hpo2.mlflow_run_id`` attribute, which a lookup by attribute misses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import optuna
from mlflow.tracking import MlflowClient
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from hpo2.study.budget import retried_trial_numbers

INTERRUPTED = "interrupted"


class TrialInterrupted(KeyboardInterrupt):
    """Raised inside trial ``trial_number`` at a safe point after a stop request.

    A ``KeyboardInterrupt`` so that ``study.optimize`` fails the trial and re-raises
    it instead of catching it as a trial error."""

    def __init__(self, trial_number: int) -> None:
        super().__init__(f"trial {trial_number} interrupted")
        self.trial_number = trial_number


class TrialStorageFault(KeyboardInterrupt):
    """Raised inside trial ``trial_number`` when its storage failed under it: a fault,
    not the trial's result, so the trial is retried and not counted.

    A ``KeyboardInterrupt`` for the reason :class:`TrialInterrupted` is one: Optuna then
    fails the trial and re-raises it to the worker, which retries the trial."""

    def __init__(self, trial_number: int, reason: str) -> None:
        super().__init__(f"trial {trial_number}: storage fault ({reason})")
        self.trial_number = trial_number
        self.reason = reason


class StudyInterrupted(Exception):
    """A study run stopped on Ctrl-C or SIGTERM; ``retried`` are the trials it will retry on resume."""

    def __init__(self, retried: list[int]) -> None:
        super().__init__(f"interrupted; trials to retry: {retried}")
        self.retried = retried


class StopRequest:
    """SIGINT and SIGTERM turned into a flag (see the module docstring).

    ``immediate`` makes the first signal raise ``KeyboardInterrupt`` too: for code
    with no safe points, such as rendering the report."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.immediate = False

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.event.is_set()
        self.event.set()
        if not first or self.immediate:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM for the block (signals can only be handled in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check(self, trial_number: int) -> None:
        """Raise :class:`TrialInterrupted` if a stop was requested."""
        if self.event.is_set():
            raise TrialInterrupted(trial_number)


class _HideInterruptedFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback: an interrupted trial is not an error worth one."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.getMessage().startswith(f"Trial {n} failed") for n in self.numbers)


@contextmanager
def interrupted_failures_hidden() -> Iterator[set[int]]:
    """While the block runs, Optuna's "Trial N failed" log line is dropped for each
    trial number added to the yielded set (the trials a stop request interrupted)."""
    hidden = _HideInterruptedFailures()
    logger = logging.getLogger("optuna.study._optimize")
    logger.addFilter(hidden)
    try:
        yield hidden.numbers
    finally:
        logger.removeFilter(hidden)


def beat_now(study: optuna.Study, trial_id: int) -> None:
    """Record the trial's first heartbeat now (RDB storages).

    Optuna's heartbeat thread records it concurrently with the objective, and a
    trial killed before any heartbeat is never failed as stale: it would stay
    RUNNING for good.  Beating here, first thing in the objective, narrows that
    window to the instant between ``study.ask`` and the objective."""
    if is_heartbeat_enabled(study._storage):
        study._storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]  # a BaseHeartbeat (checked)


def retry_trial(study: optuna.Study, trial_number: int) -> None:
    """Enqueue a WAITING copy of finished trial ``trial_number`` (same params), as Optuna retries a stale trial."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    RetryHeartbeatStaleTrialCallback(max_retry=None)(study, trial)


def retry_faulted_trial(study: optuna.Study, trial_number: int) -> bool:
    """After a storage fault in trial ``trial_number``: fail it if it is still RUNNING
    (Optuna could not tell the storage), then queue its retry unless one is queued
    already (another worker may have failed it as stale and retried it).  A trial
    that reached the storage as complete or pruned stays as it is.  Call it under the
    trial budget's lock (:meth:`hpo2.study.budget.TrialBudget.locked`), as the
    stale-trial check runs, so the two never both retry one trial.  Returns whether a
    retry was queued."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == trial_number)
    if trial.state == TrialState.RUNNING:
        with contextlib.suppress(UpdateFinishedTrialError):  # failed as stale meanwhile
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    trial = next(t for t in trials if t.number == trial_number)
    if trial.state != TrialState.FAIL or trial_number in retried_trial_numbers(trials):
        return False
    retry_trial(study, trial_number)
    return True


def close_orphan_runs(client: MlflowClient, experiment_id: str, study: optuna.Study) -> int:
    """End KILLED every MLflow trial run of ``study`` still RUNNING while its Optuna
    trial is not; returns how many were closed."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    retried = retried_trial_numbers(list(trials.values()))
    name = study.study_name.replace("'", "\\'")
    closed, token = 0, None
    while True:
        page = client.search_runs(
            [experiment_id], f"tags.`hpo2.study` = '{name}' and attributes.status = 'RUNNING'",
            max_results=1000, page_token=token,
        )  # fmt: skip
        for run in page:
            number = run.data.tags.get("hpo2.trial_number")
            if number is None:  # the study's parent run
                continue
            trial = trials.get(int(number))
            if trial is not None and trial.state == TrialState.RUNNING:
                continue
            state = trial.state.name if trial is not None else "missing"
            reason = f"worker lost: trial {number} ended in Optuna ({state}) without closing this run"
            if int(number) in retried:
                reason += "; the trial is retried"
            client.set_tag(run.info.run_id, "hpo2.status", "failed")
            client.set_tag(run.info.run_id, "hpo2.reason", reason)
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
        token = page.token
        if not token:
            return closed


def pause_for_tests(point: str, trial_number: int | None, wake: threading.Event) -> None:
    """Test hook, inactive unless ``HPO2_TEST_PAUSE_AT`` is set.

    At ``point`` (``before_run``, ``after_run``, ``step``, ``report``), when the
    variable is ``point`` or ``point:TRIAL_NUMBER``: touch the file named by
    ``HPO2_TEST_PAUSE_FILE`` and wait up to 120 s or until a stop is requested, so
    a test can kill or interrupt the process at exactly that moment."""
    wanted = os.environ.get("HPO2_TEST_PAUSE_AT")
    if not wanted:
        return
    name, _, number = wanted.partition(":")
    if name != point or (number and trial_number != int(number)):
        return
    Path(os.environ["HPO2_TEST_PAUSE_FILE"]).touch()
    wake.wait(120)
