"""Create or resume a study and run its trials: the one place where Optuna, tasks,
optimizers and MLflow tracking meet.

Per trial: the search space suggests an optimizer and its settings, the task is
built fresh (seeded), :func:`hpo2.train.run_training` trains it and reports each
validation point, which goes to Optuna (``trial.report`` / ``should_prune``, on the
schedule of :mod:`hpo2.study.checkpoints`) and to the trial's nested MLflow run
(:mod:`hpo2.study.trial_tracking`) with the flatness at the pruner's checkpoints and
at the end (:func:`hpo2.train.diagnostics.flatness_summary` on 512 training samples: top
Hessian eigenvalue by 10 Lanczos steps and trace by 4 Hutchinson probes on 128 of
them, m-sharpness, train metric and generalization gap; logged as
``curvature.*``, the last one kept in the trial's ``hpo2.flatness`` attribute,
whose ``seconds`` is the time it took; not counted as training time).  A diverged
run is pruned with its reason; an exception fails that trial only
(``catch=(Exception,)``); the study, its storage and every finished trial survive.
A study ``timeout`` also caps the running trial's training seconds (a trial it cuts
short is pruned with that reason).

After the search, the confirmation stage (:mod:`hpo2.study.confirm`) reruns the
finalists on new seeds as the trials of the study ``<name>.confirm`` through the same
trial loop (so the same recovery), once no search trial runs in another worker.

Storage (:mod:`hpo2.study.storage`): any Optuna URL; RDB storages get a heartbeat,
so a trial whose worker was killed is marked failed and retried by the next run
(run before the budget counts, see :mod:`hpo2.study.budget`); its MLflow run is
closed KILLED (:func:`~hpo2.study.recovery.close_orphan_runs`, also on every
start).  Ctrl-C and SIGTERM stop at a safe point and the running trial is retried
on resume (:mod:`hpo2.study.recovery`).  A storage fault (the database restarts or
drops a connection) is no trial's result: the trial it hit is failed and retried at
once, not counted, and the worker goes on (:mod:`hpo2.study.storage`).

Constructing a :class:`StudyRunner` does no I/O; :meth:`StudyRunner.open` checks the
stores, creates or loads the study and its MLflow parent run (:meth:`~StudyRunner.run`
opens it if needed).  The runner knows no display and no report: it tells a
:class:`~hpo2.study.observer.StudyObserver` what happens, and calls the ``report``
it was given (the CLI passes :func:`hpo2.interface.report.render_study_report`) at the end.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from hpo2.common.databases import check_sqlite_writable
from hpo2.common.redact import redact_url, sanitized_study_text
from hpo2.errors import SettingsError
from hpo2.optim.registry import load_config_file
from hpo2.study.budget import Admission, TrialBudget, retried_trial_numbers
from hpo2.study.config import StudyConfig, default_storage, default_tracking_uri
from hpo2.study.confirm import CONFIRM_OF_ATTR, confirmation_of, open_confirm_study, plan_confirmation
from hpo2.study.locks import study_lock
from hpo2.study.objectives import Direction, objective_directions
from hpo2.study.observer import StudyObserver
from hpo2.study.recovery import (
    INTERRUPTED,
    StopRequest,
    StudyInterrupted,
    TrialInterrupted,
    TrialStorageFault,
    beat_now,
    close_orphan_runs,
    interrupted_failures_hidden,
    pause_for_tests,
    retry_faulted_trial,
    retry_trial,
)
from hpo2.study.results import record_mlflow_run_id, target_text
from hpo2.study.samplers import STREAM_ATTR, build_pruner, build_sampler, claim_stream, stream_seed
from hpo2.study.space import SearchSpace
from hpo2.study.storage import (
    MAX_STORAGE_FAULTS,
    StorageLost,
    is_storage_fault,
    no_space_left,
    open_storage,
    storage_fault_reason,
    study_init_lock,
)
from hpo2.study.tracking import (
    TrackedRun,
    check_params_unchanged,
    check_reachable,
    experiment_id,
    quick_failing_http,
    study_parent_run,
)
from hpo2.study.trial_reporter import SEED_ATTR, TrialReporter, conclude_trial, record_result
from hpo2.study.trial_tracking import TrialTracker
from hpo2.study.warm_start import WarmStart, enqueue_warm_start, plan_warm_start
from hpo2.tasks import TASKS, Task
from hpo2.tasks.source import TaskBuilder, TaskSource, entrypoint_for, resolve_task, task_from_function
from hpo2.train.loop import Budget, resolve_device, run_training

_log = logging.getLogger(__name__)

#: ``report(study, config, tracking_uri, parent_run_id)``: renders the study's report at the end of a run
StudyReport = Callable[[optuna.Study, StudyConfig, str, str], object]


class StudyRunner:
    """Runs the trials of one study file (``hpo2 study run`` and ``hpo2 worker``).

    ``observer`` is told what happens (the CLI's live table); ``report``, when
    given, renders the study's report once a run finished all its trials."""

    def __init__(
        self, config: StudyConfig, study_file: Path, observer: StudyObserver | None = None,
        report: StudyReport | None = None, task: TaskBuilder | None = None,
    ) -> None:  # fmt: skip
        if task is not None:  # a function from Python (hpo2.run_study): it replaces the file's task
            config = config.model_copy(update={"task": config.task.model_copy(
                update={"name": None, "entrypoint": entrypoint_for(task)})})
        self.config = config
        self._task_function = task
        self.study_file = study_file
        self.space = SearchSpace(config)
        self.observer = observer or StudyObserver()
        self.report = report
        self.storage_url = default_storage(config, study_file)
        self.tracking_uri = default_tracking_uri(config, study_file)
        self.experiment = config.experiment or config.name
        self.device = resolve_device(config.device)
        self.warm_start: WarmStart | None = None  # what an earlier study gives (after open)
        self.offline_runs: list[TrackedRun] = []  # runs the tracking server has not received yet
        self.stop = StopRequest()
        self.deadline: float | None = None  # time.monotonic() when the study's timeout ends
        self.retried: list[int] = []  # trials interrupted in this run, retried on resume
        self._interrupted: set[int] = set()  # trials whose failure Optuna must not log: stopped, or ended outside
        self.stream: int | None = None  # this process's sampler stream (after open)
        self._study: optuna.Study | None = None
        self._parent: TrackedRun | None = None
        self._task_source: TaskSource | None = None
        # the objectives' directions: a built-in task's is registered (no data loaded); a user's task
        # is built once to learn it, in open()
        builtin = TASKS.get(config.task.name) if config.task.name is not None else None
        self.directions: list[Direction] = [] if builtin is None else objective_directions(
            config, builtin.higher_is_better)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (after :meth:`open`)."""
        if self._study is None:
            raise RuntimeError("StudyRunner.open() has not run: the study is not created or loaded yet")
        return self._study

    @property
    def parent(self) -> TrackedRun:
        """The study's MLflow parent run (after :meth:`open`)."""
        if self._parent is None:
            raise RuntimeError("StudyRunner.open() has not run: the study's MLflow run does not exist yet")
        return self._parent

    def open(self) -> StudyRunner:
        """Check that both stores can be written and the task's data is there (before
        anything is written), then create or load the study and its MLflow parent run;
        a second call does nothing.

        Raises :class:`~hpo2.errors.SettingsError` for a store that cannot be used,
        :class:`~hpo2.errors.DataMissingError` when the task's data files are missing."""
        if self._study is not None:
            return self
        self._check_before_writing()
        # Workers starting together would race to create the tables of Optuna and
        # MLflow, the study and its parent run: the first one creates them, the others wait.
        with study_init_lock(self.storage_url, self.study_file, self.config.name):
            study = optuna.create_study(
                study_name=self.config.name,
                storage=open_storage(self.storage_url, self.config, self._close_lost_trial_runs),
                pruner=build_pruner(self.config),
                directions=self.directions,
                load_if_exists=True,
            )
            # this process's own draws: no two processes, and no resume, replay each other's (samplers module)
            self.stream = claim_stream(study)
            study.sampler = build_sampler(self.config, self.space, self.stream,
                                          functools.partial(study_lock, study, self.storage_url, "proposal"))
            # Artifacts beside the study for a local store; a tracking server decides its own.
            local = self.tracking_uri.startswith("sqlite")
            artifacts = str(self.study_file.parent / "mlartifacts") if local else None
            self._parent = study_parent_run(
                self.tracking_uri, self.experiment, self.config.name,
                {"hpo2.task": self.config.task.label, "hpo2.sampler": self.config.sampler.name}, artifacts,
            )  # fmt: skip
        self._study = study
        self.observer.study_opened(study)
        return self

    def _check_before_writing(self) -> None:
        """The checks :meth:`open` makes before it writes anything: both stores can be written, the
        study's params are those its MLflow run has, the task's data is there and the objectives'
        directions are known; then a warm start's earlier study is read (only read)."""
        check_sqlite_writable(self.storage_url, "storage")
        check_reachable(self.tracking_uri)
        check_params_unchanged(self.tracking_uri, self.experiment, self.config.name, self.study_params())
        # a user's task is imported, and missing data files found, now: one line, not a failure in every trial
        try:
            self.directions = objective_directions(self.config, self._task_direction())
        except SettingsError as exc:
            raise SettingsError(f"{self.study_file}: {exc}") from None
        if self.config.warm_start is not None:  # the earlier study is only read
            self.warm_start = plan_warm_start(self.config, self.study_file, self.space)

    @property
    def task_source(self) -> TaskSource:
        """Where the study's task comes from (the user's code is imported on first use)."""
        if self._task_source is None:
            if self._task_function is not None:
                self._task_source = task_from_function(self._task_function, str(self.config.task.entrypoint))
            else:
                self._task_source = resolve_task(self.config.task, self.study_file.parent)
        return self._task_source

    def build_task(self, seed: int | None = None) -> Task:
        """The study's task, built fresh with ``seed`` (default: the study's)."""
        return self.task_source.build({**self.config.task.settings, "seed": self.config.seed if seed is None else seed})

    def _task_direction(self) -> bool:
        """Whether the task's metric is better higher: a built-in's registry entry says so without
        loading data (its data files are checked; it is built once only to check an ``n_train`` or
        ``n_valid`` against its splits); the user's own task is built once to learn it (which also
        shows a wrong return type or setting before any trial)."""
        source = self.task_source
        settings = self.config.task.settings
        source.check_data({**settings, "seed": self.config.seed})
        if source.higher_is_better is not None:
            if settings.get("n_train") is not None or settings.get("n_valid") is not None:
                self.build_task()
            return source.higher_is_better
        return self.build_task().higher_is_better

    def _close_lost_trial_runs(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> None:
        """A worker died mid-trial: its MLflow run must not stay RUNNING forever
        (found by the run's trial-number tag: the kill may have come before the
        trial's ``hpo2.mlflow_run_id`` attribute)."""
        try:
            close_orphan_runs(self.parent.client, experiment_id(self.parent.client, self.experiment), study)
        except Exception as exc:  # tracking lost: the next start closes them
            warnings.warn(f"MLflow runs of lost trials could not be closed now ({type(exc).__name__}: {exc}); "
                          "the next `hpo2 study run` closes them", RuntimeWarning, stacklevel=2)

    def _begin(self) -> None:
        """Log the study's params and file to its parent run; close the MLflow runs
        of trials lost earlier; enqueue a warm start's configurations, then the paper defaults."""
        self.parent.log_params(self.study_params())
        # tags: a resume may change them; the target is what every time_to_target_* metric was measured against
        self.parent.set_tags({"hpo2.directions": ",".join(self.directions), "hpo2.target": target_text(self.config)})
        self.log_study_file()
        self._close_lost_trial_runs(self.study)
        # check-then-enqueue: workers starting together must not both see "not enqueued yet"
        with study_init_lock(self.storage_url, self.study_file, self.config.name):
            if self.warm_start is not None:  # first: an earlier study's best configurations
                enqueue_warm_start(self.study, self.warm_start)
            if self.config.enqueue_defaults:
                self.space.enqueue_defaults(self.study)

    def study_params(self) -> dict[str, str]:
        """The parent run's params: what a resume may not change (:func:`check_params_unchanged`)."""
        config = self.config
        return {"task": config.task.label, "sampler": config.sampler.name, "pruner": config.pruner.name,
                "optimizers": ",".join(self.space.names), "objective": ",".join(o.metric for o in config.objective)}

    def log_study_file(self) -> None:
        """Log the study file to the parent run as a copy with URL passwords masked
        (MLflow's UI has no login: whoever reaches it could read the file)."""
        with tempfile.TemporaryDirectory(prefix="hpo2-study-") as folder:
            copy = Path(folder) / f"{self.study_file.stem}.yaml"
            copy.write_text(sanitized_study_text(load_config_file(self.study_file)))
            self.parent.log_artifact(str(copy))

    def run(self, n_trials: int | None = None, timeout: float | None = None) -> optuna.Study:
        """Run trials until the study holds ``n_trials`` (failed ones not counted;
        the count continues on resume and is shared by every worker) or until
        ``timeout`` seconds have passed; ``jobs`` threads run trials at once.
        Opens the study first if :meth:`open` has not run.

        Raises :class:`~hpo2.study.recovery.StudyInterrupted` after Ctrl-C or SIGTERM,
        once the running trials are failed and queued for retry and the MLflow runs closed."""
        with quick_failing_http():  # MLflow calls made here and by the report, not only by the tracked runs
            self.open()
            self._begin()
            target = n_trials if n_trials is not None else self.config.n_trials
            budget = TrialBudget(self.study, self.storage_url, target)
            self._run(budget, timeout)
        return self.study

    def _run(self, budget: TrialBudget, timeout: float | None) -> None:
        limit = timeout if timeout is not None else self.config.timeout
        self.deadline = None if limit is None else time.monotonic() + limit
        with self.stop.installed(), interrupted_failures_hidden() as self._interrupted:
            try:
                self._run_trials(budget)
                if not self.stop.requested:
                    self._confirm()
                if not self.stop.requested:
                    self.finish()
            except KeyboardInterrupt:  # a second signal, or one during the report
                self.stop.event.set()
            if self.stop.requested:
                self._end_interrupted()

    def _time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def _run_trials(self, budget: TrialBudget) -> None:
        """Run ``budget``'s trials: ``jobs`` worker loops (:meth:`_work`) at once, each in its own
        thread (a single one in this thread)."""
        if self.config.jobs == 1:
            self._work(budget)
            return
        threads = [threading.Thread(target=self._work, args=(budget,), name=f"hpo2-job-{i}")
                   for i in range(self.config.jobs)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _work(self, budget: TrialBudget) -> None:
        """One worker's loop: admit a trial and run it (:meth:`_run_admitted`) until the budget is
        full, a stop is requested, the study's timeout ends, or a trial still RUNNING elsewhere has
        been waited for past the patience below.  A storage fault while admitting is handled as one
        (:meth:`_after_storage_fault`)."""
        poll = min(5.0, float(self.config.heartbeat_interval))
        # A dead worker's trial goes stale within the grace period (2 heartbeats, see
        # open_storage); one that is still RUNNING after 3 is alive, or died before its
        # first heartbeat (Optuna never fails those): stop waiting for it then.
        patience = 3.0 * self.config.heartbeat_interval + poll
        waiting_since: float | None = None
        faults = 0  # storage faults since a trial last ended by itself
        while not self.stop.requested and self._time_left() > 0:
            try:
                decision = budget.admit()
            except Exception as exc:
                if not is_storage_fault(exc):
                    raise
                faults = self._after_storage_fault(budget, faults, exc, None)
                continue
            if decision is Admission.FULL:
                return
            if decision is Admission.WAIT:  # a trial still RUNNING elsewhere may be a dead worker's
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > patience:
                    return
                self.stop.event.wait(min(poll, self._time_left()))
                continue
            waiting_since = None
            after = self._run_admitted(budget, faults)
            if after is None:  # a stop request ended the trial
                return
            faults = after

    def _run_admitted(self, budget: TrialBudget, faults: int) -> int | None:
        """Run the trial ``budget`` just admitted (``faults``: storage faults in a row before it) and
        release the budget's lock after it.  Returns the storage faults in a row after it (0 when it
        ended by itself), or None when a stop request ended it (it is queued for retry on resume and
        this worker stops).  Optuna's ask or tell failing is a storage fault, a trial failed as stale
        meanwhile (:meth:`_failed_as_stale`), or raised (a full disk as
        :class:`~hpo2.study.storage.StorageLost`)."""
        started: list[int] = []  # the trial's number, once it exists
        try:
            budget.study.optimize(functools.partial(self._admitted, budget, started), n_trials=1, catch=(Exception,),
                                  gc_after_trial=True, callbacks=[self.observer.trial_stored])
            return 0
        except TrialInterrupted as stopped:
            retry_trial(budget.study, stopped.trial_number)
            self.retried.append(stopped.trial_number)
            return None
        except TrialStorageFault as fault:
            return self._after_storage_fault(budget, faults, fault, fault.trial_number)
        except Exception as exc:  # Optuna's ask or tell failed (the objective's own errors are caught)
            if (full := no_space_left(exc)) is not None:  # no passing fault: retrying fills nothing
                raise StorageLost(f"storage {redact_url(self.storage_url)}: {full.strerror}; free space on "
                                  "its disk (or move the storage) and rerun to go on") from None
            if is_storage_fault(exc):
                return self._after_storage_fault(budget, faults, exc, started[0] if started else None)
            if not (started and self._failed_as_stale(budget.study, started[0], exc)):
                raise
            return faults
        finally:
            budget.release()

    def _admitted(self, budget: TrialBudget, started: list[int], trial: optuna.Trial) -> float | list[float]:
        """The objective of an admitted trial: note its number in ``started``, let other workers
        count it (it now exists in storage), and run it (:meth:`objective`)."""
        started.append(trial.number)
        budget.release()  # the trial now exists in storage: other workers may count it
        return self.objective(trial)

    def _confirm(self) -> None:
        """The confirmation stage (:mod:`hpo2.study.confirm`): once no search trial runs, enqueue
        the runs still missing and run them, as exactly as the search's (the study's timeout
        bounds the search only: the stage's cost is known in advance)."""
        if not self.config.confirms:
            return
        if any(t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False)):
            _log.warning("search trials still run in another worker: the worker that ends the search confirms")
            return
        with study_init_lock(self.storage_url, self.study_file, self.config.name):
            confirm = open_confirm_study(self.study)
            planned = plan_confirmation(self.study, confirm, self.config)
        self.deadline = None
        self.observer.confirmation_started(confirm, planned)
        self._run_trials(TrialBudget(confirm, self.storage_url, planned))

    def _after_storage_fault(self, budget: TrialBudget, faults: int, exc: BaseException, number: int | None) -> int:
        """The storage failed under this worker (``exc``), in trial ``number`` if one
        had started: once the storage answers again, fail that trial and retry it
        (:func:`~hpo2.study.recovery.retry_faulted_trial`), and go on.  Returns the
        faults in a row, this one included; raises :class:`~hpo2.study.storage.StorageLost`
        past :data:`MAX_STORAGE_FAULTS` of them (a storage that fails every trial is not
        a passing fault), or when the storage still fails (after
        :data:`~hpo2.study.storage.STORAGE_PATIENCE_SECONDS` for a server database)."""
        budget.release()  # its lock must be free to take it again below
        faults += 1
        reason = exc.reason if isinstance(exc, TrialStorageFault) else storage_fault_reason(exc)
        if faults > MAX_STORAGE_FAULTS:
            raise StorageLost(f"storage {redact_url(self.storage_url)}: {faults} storage faults in a row, the last: "
                              f"{reason}; this worker stops (rerun it once the database works)") from None
        try:
            with budget.locked():
                retried = number is not None and retry_faulted_trial(budget.study, number)
        except Exception as again:
            if not is_storage_fault(again):
                raise
            lost = f"; trial {number} is retried then" if number is not None else ""
            raise StorageLost(f"storage {redact_url(self.storage_url)} stays unusable "
                              f"({storage_fault_reason(again)}); this worker stops: rerun it once the database "
                              f"works{lost}") from None
        what = f"trial {number} is failed as a fault and retried" if retried else "no trial was lost"
        _log.warning("the storage failed under this worker (%s): %s", reason, what)
        return faults

    def _failed_as_stale(self, study: optuna.Study, number: int, exc: Exception) -> bool:
        """Whether trial ``number`` of ``study``, which this worker ran, was failed by the stale-trial
        check meanwhile (its heartbeat stopped past the grace period: a storage outage, a
        stopped process), so that Optuna refused to write its result (``exc``: "Cannot
        tell a FAIL trial", ``UpdateFinishedTrialError``); said in one line."""
        refused = isinstance(exc, UpdateFinishedTrialError) or str(exc).startswith("Cannot tell a FAIL trial")
        trials = study.get_trials(deepcopy=False)
        if not refused or next(t for t in trials if t.number == number).state != TrialState.FAIL:
            return False
        retried = "its retry runs instead" if number in retried_trial_numbers(trials) else "no retry is left"
        _log.warning("trial %d was failed as stale while it ran (no heartbeat for %d s): its result is dropped; %s",
                     number, 2 * self.config.heartbeat_interval, retried)
        return True

    def _end_interrupted(self) -> None:
        """Close the parent run KILLED, keep what the tracking server missed, raise StudyInterrupted."""
        self.parent.set_tags({"hpo2.status": INTERRUPTED, "hpo2.reason": INTERRUPTED})
        if not self.parent.end("KILLED"):
            self.offline_runs.append(self.parent)
        self.retry_offline()
        self._spool_offline()
        raise StudyInterrupted(sorted(self.retried))

    def finish(self) -> None:
        """Tag the parent run with the best result, render the report (if the runner
        was given one and tracking received everything) and close the parent run."""
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if complete and not self.config.multi_objective:
            best = self.study.best_trial
            self.parent.set_tags({"hpo2.best_trial": best.number, "hpo2.best_optimizer": best.params.get("optimizer")})
            self.parent.log_metrics({"best_value": best.value}, step=len(self.study.trials))
        self._tag_confirmation()
        self.retry_offline()
        if self.report is not None and not self.offline_runs:
            self.stop.immediate = True  # the report has no safe points: a signal stops it at once
            pause_for_tests("report", None, self.stop.event)
            self.observer.report_started()
            self.report(self.study, self.config, self.tracking_uri, self.parent.run_id or "")
            self.observer.report_finished()
            self.stop.immediate = False
        if not self.parent.end("FINISHED"):
            self.offline_runs.append(self.parent)
        self.retry_offline()
        self._spool_offline()

    def _tag_confirmation(self) -> None:
        """Name the confirmed winner and the recommended configuration on the parent run."""
        outcome = confirmation_of(self.study, self.config)
        if outcome is None or outcome.recommended is None or outcome.winner is None:
            return
        pick, winner = outcome.recommended, outcome.winner
        mean, std, low, high = pick.interval
        self.parent.set_tags({"hpo2.confirmed_winner": winner.trial.number, "hpo2.recommended_trial": pick.trial.number,
                              "hpo2.recommended_optimizer": pick.optimizer, "hpo2.recommended_reason": outcome.reason,
                              "hpo2.ties": ",".join(str(c.trial.number) for c in outcome.ties)})  # fmt: skip
        self.parent.log_metrics({"confirmed_mean": mean, "confirmed_std": std, "confirmed_ci_low": low,
                                 "confirmed_ci_high": high, "confirmed_winner_mean": winner.interval[0]}, step=0)

    def _spool_offline(self) -> None:
        """Save what the tracking server never received under ``mlflow-unsent/`` (``hpo2 study sync`` sends it)."""
        if self.offline_runs:
            folder = self.study_file.parent / "mlflow-unsent"
            paths = [run.spool(folder, self.config.name) for run in self.offline_runs]
            self.offline_runs = []
            warnings.warn(
                f"MLflow tracking at {redact_url(self.tracking_uri)} stayed unreachable: {len(paths)} run(s) were "
                f"not sent; their params, metrics and tags are saved in {folder}; send them with "
                f"`hpo2 study sync {self.study_file}`",
                RuntimeWarning,
                stacklevel=2,
            )

    def retry_offline(self) -> None:
        """Send what a lost tracking server missed, now that it may be back."""
        self.offline_runs = [run for run in self.offline_runs if not run.retry()]

    # -- one trial
    def _track(self, trial: optuna.Trial, optimizer: str, settings: dict[str, Any]) -> TrialTracker:
        number = trial.number

        def created(run_id: str) -> None:  # now, or when a lost server comes back (then maybe after the trial)
            pause_for_tests("after_run", number, self.stop.event)
            record_mlflow_run_id(trial.study, number, run_id)

        confirm_of = trial.user_attrs.get(CONFIRM_OF_ATTR)
        tags = {"hpo2.target": target_text(self.config)}  # what its time_to_target_* metrics were measured against
        if confirm_of is not None:
            tags |= {CONFIRM_OF_ATTR: str(confirm_of), SEED_ATTR: str(self.trial_seed(trial))}
        return TrialTracker(self.tracking_uri, self.experiment, trial.study.study_name, self.parent.run_id, number,
                            optimizer, settings, on_created=created, tags=tags,
                            kind="trial" if confirm_of is None else "confirm")  # fmt: skip

    def trial_seed(self, trial: optuna.Trial) -> int:
        """The training seed of ``trial``: a confirmation run's own; else the study's ``seed`` with
        ``seeds: fixed``, and with ``per_trial`` one drawn from the study's seed and the trial's
        number (a retry's: that of the trial it retries, so it reruns alike)."""
        if CONFIRM_OF_ATTR in trial.user_attrs:
            return int(trial.user_attrs[SEED_ATTR])
        if self.config.seeds == "fixed":
            return self.config.seed
        first = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("retry_history", [trial.number])[0]
        return stream_seed(self.config.seed, 1 + int(first))

    def _end_run(self, tracker: TrialTracker, status: str, **details: Any) -> None:
        """End a trial's MLflow run (once); keep it to resend if the server missed it."""
        if tracker.ended:
            return

        def after(sent: bool) -> None:
            if not sent:
                self.offline_runs.append(tracker.run)
            self.retry_offline()

        tracker.end(status, after=after, **details)
        self.observer.trial_tracked(tracker.seconds, tracker.total_seconds)

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        """Optuna's objective: suggest the trial's optimizer and settings, open its MLflow run, train it
        (:meth:`_train`).  Pruned: its run ends KILLED; a stop request: :class:`~hpo2.study.recovery.TrialInterrupted`
        (retried on resume); a storage fault or a stale check ended it from outside (:meth:`_ended_from_outside`);
        any other exception fails this trial only."""
        tracker: TrialTracker | None = None
        try:  # storage writes from the first line: a storage fault anywhere here is handled as one
            beat_now(trial.study, trial._trial_id)
            trial.study._storage.set_trial_system_attr(trial._trial_id, STREAM_ATTR, self.stream)
            optimizer_name, settings = self.space.suggest(trial)
            self.observer.trial_started(trial.number, optimizer_name)
            pause_for_tests("before_run", trial.number, self.stop.event)
            self.stop.check(trial.number)
            tracker = self._track(trial, optimizer_name, settings)
            self.stop.check(trial.number)
            return self._train(trial, optimizer_name, settings, tracker)
        except optuna.TrialPruned:
            if tracker is not None:
                self._end_run(tracker, "KILLED", status_tag="pruned")
            raise
        except KeyboardInterrupt:  # a stop request (or a second Ctrl-C) reached this trial
            self._mark_interrupted(trial, tracker)
            raise TrialInterrupted(trial.number) from None
        except Exception as exc:
            if is_storage_fault(exc):  # not the trial's failure: no word to the storage, which may be away
                reason = storage_fault_reason(exc)
                self._ended_from_outside(trial.number, tracker, exc, f"storage fault: {reason}; retried",
                                         "storage fault")  # fmt: skip
                raise TrialStorageFault(trial.number, reason) from exc
            if isinstance(exc, UpdateFinishedTrialError):  # a stale check failed it while it ran: the storage refuses
                self._ended_from_outside(trial.number, tracker, exc, "failed as stale while it ran", "stale")
                raise
            self._mark_failed(trial, tracker, exc)
            # Whoever keeps the exception (Optuna's log, a log handler) must not keep the
            # failed trial's model and tensors alive: drop the finished frames' locals.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _mark_interrupted(self, trial: optuna.Trial, tracker: TrialTracker | None) -> None:
        """A stop request reached ``trial``: Optuna must not log its failure, its status says it is
        retried on resume, and its MLflow run (if opened) ends KILLED."""
        self._interrupted.add(trial.number)
        trial.set_user_attr("hpo2.status", INTERRUPTED)
        trial.set_user_attr("hpo2.reason", f"{INTERRUPTED}: retried on resume")
        if tracker is not None:
            self._end_run(tracker, "KILLED", reason=INTERRUPTED, status_tag=INTERRUPTED)

    def _mark_failed(self, trial: optuna.Trial, tracker: TrialTracker | None, exc: Exception) -> None:
        """``trial`` raised ``exc``: its status and reason say so, and its MLflow run (if opened) ends FAILED."""
        trial.set_user_attr("hpo2.status", "failed")
        trial.set_user_attr("hpo2.reason", f"{type(exc).__name__}: {exc}"[:2000])
        if tracker is not None:
            self._end_run(tracker, "FAILED", reason=f"{type(exc).__name__}: {exc}", status_tag="failed")

    def _ended_from_outside(
        self, number: int, tracker: TrialTracker | None, exc: Exception, reason: str, status_tag: str
    ) -> None:
        """Trial ``number`` was ended by something outside it (its storage failed, or a
        stale check failed it): Optuna must not log it as the trial's failure, and its
        MLflow run ends KILLED with ``reason``; nothing is written to its storage."""
        self._interrupted.add(number)
        if tracker is not None:
            self._end_run(tracker, "KILLED", reason=reason, status_tag=status_tag)
        traceback.clear_frames(exc.__traceback__)

    def _train(
        self, trial: optuna.Trial, optimizer_name: str, settings: dict[str, Any], tracker: TrialTracker
    ) -> float | list[float]:
        """Train the trial's configuration (:class:`~hpo2.study.trial_reporter.TrialReporter`
        reports it), record the result and conclude the trial."""
        seed = self.trial_seed(trial)
        task = self.build_task(seed)
        reporter = TrialReporter(self.config, trial, tracker, task, seed, self.device, self.stop, self.observer)
        budget, capped = self._trial_budget()
        result = run_training(
            task, {"name": optimizer_name, "settings": settings}, budget,
            seed=seed, device=self.device, report=reporter.report, on_step=reporter.on_step,
        )  # fmt: skip
        if capped and result.status == "completed" and result.wall_seconds >= budget.seconds:  # type: ignore[operator]  # capped: seconds set
            result.status = "stopped"
            result.reason = f"the study's timeout ended the trial after {result.wall_seconds:.1f} s of training"
        reporter.measure_final(result.final)
        record_result(trial, result, seed)
        return conclude_trial(self.config, trial, tracker, result, self._end_run)

    def _trial_budget(self) -> tuple[Budget, bool]:
        """The study's budget, its seconds capped by the time the study's timeout leaves
        (True if the cap applies): an endless budget still ends with the study."""
        budget, left = self.config.budget, self._time_left()
        if budget.seconds is not None and budget.seconds <= left:
            return budget, False
        if math.isinf(left):
            return budget, False
        return budget.model_copy(update={"seconds": max(left, 1e-3)}), True
