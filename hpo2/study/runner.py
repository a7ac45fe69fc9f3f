"""Create or resume a study and run its trials: the one place where Optuna, tasks,
optimizers and MLflow tracking meet.

Per trial: the search space suggests an optimizer and its settings, the task is
built fresh (seeded), :func:`hpo2.train.run_training` trains it and reports each
validation point, which goes to Optuna (``trial.report`` / ``should_prune``) and
to the trial's nested MLflow run with the flatness at the pruner's checkpoints and
at the end (:func:`hpo2.diagnostics.flatness_summary` on 512 training samples: top
Hessian eigenvalue by 10 Lanczos steps and trace by 4 Hutchinson probes on 128 of
them, m-sharpness, train metric and generalization gap; logged as
``curvature.*``, the last one kept in the trial's ``hpo2.flatness`` attribute,
whose ``seconds`` is the time it took; not counted as training time).  A diverged
run is pruned with its reason; an exception fails that trial only (``catch=(Exception,)``); the study, its storage
and every finished trial survive.  A study ``timeout`` also caps the running
trial's training seconds (a trial it cuts short is pruned with that reason).

Storage: any Optuna URL.  RDB storages (sqlite, PostgreSQL) get a heartbeat, so a
trial whose worker was killed is marked failed and retried by the next run
(``RetryHeartbeatStaleTrialCallback``, run before the budget counts, see
:mod:`hpo2.study.budget`); its MLflow run is closed KILLED
(:func:`~hpo2.study.recovery.close_orphan_runs`, also on every start).  Ctrl-C
and SIGTERM stop at a safe point and the running trial is retried on resume
(:mod:`hpo2.study.recovery`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo2.databases import check_sqlite_writable, open_journal
from hpo2.diagnostics import flatness_summary
from hpo2.optim.registry import load_config_file
from hpo2.redact import redact_url, sanitized_study_text
from hpo2.study.budget import Admission, TrialBudget, file_lock
from hpo2.study.config import StudyConfig, default_storage, default_tracking_uri, storage_error
from hpo2.study.recovery import (
    INTERRUPTED,
    StopRequest,
    StudyInterrupted,
    TrialInterrupted,
    beat_now,
    close_orphan_runs,
    pause_for_tests,
    retry_trial,
)
from hpo2.study.results import record_mlflow_run_id
from hpo2.study.samplers import build_pruner, build_sampler
from hpo2.study.space import SearchSpace
from hpo2.study.warm_start import enqueue_warm_start, plan_warm_start
from hpo2.tasks import build_task
from hpo2.tracking import TrackedRun, check_reachable, experiment_id, flatten_params, study_parent_run
from hpo2.train import Budget, Evaluation, TrainResult, resolve_device, run_training

DIRECTIONS = {"valid_loss": "minimize", "train_loss": "minimize", "wall_seconds": "minimize", "grad_equivalents": "minimize"}


def open_storage(
    url: str, config: StudyConfig, on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
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


def init_lock_path(study_file: Path, name: str) -> Path:
    """A lock file in the temp folder, one per study file and name (the study's own folder stays clean)."""
    digest = hashlib.sha256(f"{study_file.resolve()}:{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"hpo2-init-{digest}.lock"


def objective_directions(config: StudyConfig, higher_is_better: bool) -> list[str]:
    out = []
    for objective in config.objective:
        if objective.direction != "auto":
            out.append(objective.direction)
        elif objective.metric == "valid_metric":
            out.append("maximize" if higher_is_better else "minimize")
        else:
            out.append(DIRECTIONS[objective.metric])
    return out


def on_checkpoint(index: int, dense: int = 10, growth: float = 1.25) -> bool:
    """Whether evaluation ``index`` (0-based) goes to the pruner and the curvature
    diagnostics: each of the first ``dense``, then those at
    :math:`\\lceil d\\,g^k \\rceil` (``d = dense``, ``g = growth``).

    Every evaluation is logged to MLflow, but ``trial.report`` plus
    ``should_prune`` read every trial's intermediate values from the storage, a
    cost that grows with the number of reports: a seconds budget on a task whose
    epoch is one step (full-batch logistic regression) made thousands of reports
    and spent 95% of the trial's wall time there.  The schedule keeps
    :math:`O(d + \\log_g E)` reports for :math:`E` evaluations, and because it
    depends on the index only, every trial reports the same steps, which is what
    the median and successive-halving pruners compare.
    """
    if index < dense:
        return True
    checkpoint = dense
    while checkpoint < index:
        checkpoint = max(checkpoint + 1, math.ceil(checkpoint * growth))
    return checkpoint == index


class _HideInterruptedFailures(logging.Filter):
    """Optuna logs a failed trial with its traceback: an interrupted trial is not an error worth one."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.getMessage().startswith(f"Trial {n} failed") for n in self.numbers)


_INTERRUPTED_LOGS = _HideInterruptedFailures()
logging.getLogger("optuna.study._optimize").addFilter(_INTERRUPTED_LOGS)


def curvature_due(spent_seconds: float, training_seconds: float, share: float) -> bool:
    """Whether a checkpoint may measure flatness: only while the measurements so far
    took at most ``share`` of the trial's time (training plus measuring), so a
    study's trials spend at most about that share on it (one measurement of
    overshoot; the end-of-trial measurement is always taken).  Without the cap a
    3-10 s trial spent a quarter to a half of its time there (BENCHMARKS.md)."""
    return spent_seconds <= share * (training_seconds + spent_seconds)


def objective_value(metric: str, result: TrainResult) -> float:
    final = result.final
    if metric == "wall_seconds":
        return result.wall_seconds
    if metric == "grad_equivalents":
        return result.grad_equivalents
    if final is None:
        return math.nan
    return {"valid_metric": final.valid_metric, "valid_loss": final.valid_loss, "train_loss": final.train_loss}[metric]


@dataclass
class Progress:
    """What the progress display shows; updated from the objective and callbacks."""

    study: optuna.Study | None = None
    current_trial: int | None = None
    current_epoch: float = 0.0
    current_optimizer: str = ""
    tracking_seconds: float = 0.0
    trial_seconds: float = 0.0
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    def changed(self) -> None:
        for listener in self.listeners:
            listener(self)


class StudyRunner:
    """Runs the trials of one study file (``hpo2 study run`` and ``hpo2 worker``)."""

    def __init__(self, config: StudyConfig, study_file: Path, progress: Progress | None = None) -> None:
        self.config = config
        self.study_file = study_file
        self.space = SearchSpace(config)
        self.progress = progress or Progress()
        self.storage_url = default_storage(config, study_file)
        self.tracking_uri = default_tracking_uri(config, study_file)
        self.experiment = config.experiment or config.name
        self.device = resolve_device(config.device)
        check_sqlite_writable(self.storage_url, "storage")  # before anything is written
        check_reachable(self.tracking_uri)
        self.warm_start = plan_warm_start(config, study_file, self.space) if config.warm_start is not None else None
        self.offline_runs: list[TrackedRun] = []  # runs the tracking server has not received yet
        self.stop = StopRequest()
        self.deadline: float | None = None  # time.monotonic() when the study's timeout ends
        self.retried: list[int] = []  # trials interrupted in this run, retried on resume
        probe = build_task(config.task.name, config.task.settings)
        self.directions = objective_directions(config, probe.higher_is_better)
        # Workers starting together on one machine would race to create the sqlite
        # tables of Optuna and MLflow: the first one creates them, the others wait.
        with file_lock(init_lock_path(study_file, config.name)):
            self.study = optuna.create_study(
                study_name=config.name,
                storage=open_storage(self.storage_url, config, self._close_lost_trial_runs),
                sampler=build_sampler(config, self.space),
                pruner=build_pruner(config),
                directions=self.directions,
                load_if_exists=True,
            )
            self.progress.study = self.study
            # Artifacts beside the study for a local store; a tracking server decides its own.
            artifacts = str(study_file.parent / "mlartifacts") if self.tracking_uri.startswith("sqlite") else None
            self.parent = study_parent_run(
                self.tracking_uri, self.experiment, config.name,
                {"hpo2.task": config.task.name, "hpo2.sampler": config.sampler.name}, artifacts,
            )  # fmt: skip

    def _close_lost_trial_runs(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None = None) -> None:
        """A worker died mid-trial: its MLflow run must not stay RUNNING forever
        (found by the run's trial-number tag: the kill may have come before the
        trial's ``hpo2.mlflow_run_id`` attribute)."""
        try:
            close_orphan_runs(self.parent.client, experiment_id(self.parent.client, self.experiment), study)
        except Exception as exc:  # tracking lost: the next start closes them
            warnings.warn(f"MLflow runs of lost trials could not be closed now ({type(exc).__name__}: {exc}); "
                          "the next `hpo2 study run` closes them", RuntimeWarning, stacklevel=2)

    def start(self) -> None:
        """Log the study's params and file to its parent run; close the MLflow runs
        of trials lost earlier; enqueue a warm start's configurations, then the paper defaults."""
        self.parent.log_params({"task": self.config.task.name, "sampler": self.config.sampler.name,
                                "pruner": self.config.pruner.name, "optimizers": ",".join(self.space.names),
                                "objective": ",".join(o.metric for o in self.config.objective)})
        self.log_study_file()
        self._close_lost_trial_runs(self.study)
        if self.warm_start is not None:  # first: an earlier study's best configurations
            enqueue_warm_start(self.study, self.warm_start)
        if self.config.enqueue_defaults:
            self.space.enqueue_defaults(self.study)

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

        Raises :class:`~hpo2.study.recovery.StudyInterrupted` after Ctrl-C or SIGTERM,
        once the running trials are failed and queued for retry and the MLflow runs closed."""
        _INTERRUPTED_LOGS.numbers.clear()  # trial numbers of this study only
        self.start()
        budget = TrialBudget(self.study, self.storage_url, n_trials if n_trials is not None else self.config.n_trials)
        limit = timeout if timeout is not None else self.config.timeout
        self.deadline = None if limit is None else time.monotonic() + limit
        with self.stop.installed():
            try:
                self._run_trials(budget)
                if not self.stop.requested:
                    self.finish()
            except KeyboardInterrupt:  # a second signal, or one during the report
                self.stop.event.set()
            if self.stop.requested:
                self._end_interrupted()
        return self.study

    def _time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def _run_trials(self, budget: TrialBudget) -> None:
        poll = min(5.0, float(self.config.heartbeat_interval))
        # A dead worker's trial goes stale within the grace period (2 heartbeats, see
        # open_storage); one that is still RUNNING after 3 is alive, or died before its
        # first heartbeat (Optuna never fails those): stop waiting for it then.
        patience = 3.0 * self.config.heartbeat_interval + poll

        def admitted(trial: optuna.Trial) -> float | list[float]:
            budget.release()  # the trial now exists in storage: other workers may count it
            return self.objective(trial)

        def work() -> None:
            waiting_since: float | None = None
            while not self.stop.requested and self._time_left() > 0:
                decision = budget.admit()
                if decision is Admission.FULL:
                    return
                if decision is Admission.WAIT:  # a trial still RUNNING elsewhere may be a dead worker's
                    waiting_since = waiting_since or time.monotonic()
                    if time.monotonic() - waiting_since > patience:
                        return
                    self.stop.event.wait(min(poll, self._time_left()))
                    continue
                waiting_since = None
                try:
                    self.study.optimize(admitted, n_trials=1, catch=(Exception,), gc_after_trial=True,
                                        callbacks=[lambda study, trial: self.progress.changed()])
                except TrialInterrupted as stopped:
                    retry_trial(self.study, stopped.trial_number)
                    self.retried.append(stopped.trial_number)
                    return
                finally:
                    budget.release()

        if self.config.jobs == 1:
            work()
        else:
            threads = [threading.Thread(target=work, name=f"hpo2-job-{i}") for i in range(self.config.jobs)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def _end_interrupted(self) -> None:
        """Close the parent run KILLED, keep what the tracking server missed, raise StudyInterrupted."""
        self.parent.set_tags({"hpo2.status": INTERRUPTED, "hpo2.reason": INTERRUPTED})
        if not self.parent.end("KILLED"):
            self.offline_runs.append(self.parent)
        self.retry_offline()
        self._spool_offline()
        raise StudyInterrupted(sorted(self.retried))

    def finish(self) -> None:
        """Tag the parent run with the best result and close it."""
        complete = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if complete and not self.config.multi_objective:
            best = self.study.best_trial
            self.parent.set_tags({"hpo2.best_trial": best.number, "hpo2.best_optimizer": best.params.get("optimizer")})
            self.parent.log_metrics({"best_value": best.value}, step=len(self.study.trials))
        self.retry_offline()
        if self.config.report and not self.offline_runs:
            from hpo2.report import render_study_report

            self.stop.immediate = True  # the report has no safe points: a signal stops it at once
            pause_for_tests("report", None, self.stop.event)
            render_study_report(self.study, self.config, self.tracking_uri, self.parent.run_id)
            self.stop.immediate = False
        if not self.parent.end("FINISHED"):
            self.offline_runs.append(self.parent)
        self.retry_offline()
        self._spool_offline()

    def _spool_offline(self) -> None:
        """Save what the tracking server never received under ``mlflow-unsent/`` (``hpo2 study sync`` sends it)."""
        if self.offline_runs:
            folder = self.study_file.parent / "mlflow-unsent"
            paths = [run.spool(folder, self.config.name) for run in self.offline_runs]
            self.offline_runs = []
            warnings.warn(
                f"MLflow tracking at {redact_url(self.tracking_uri)} stayed unreachable: {len(paths)} run(s) were not sent; "
                f"their params, metrics and tags are saved in {folder}; send them with `hpo2 study sync {self.study_file}`",
                RuntimeWarning,
                stacklevel=2,
            )

    def retry_offline(self) -> None:
        """Send what a lost tracking server missed, now that it may be back."""
        self.offline_runs = [run for run in self.offline_runs if not run.retry()]

    # -- one trial
    def objective(self, trial: optuna.Trial) -> float | list[float]:
        beat_now(self.study, trial._trial_id)
        optimizer_name, settings = self.space.suggest(trial)
        self.progress.current_trial, self.progress.current_optimizer, self.progress.current_epoch = trial.number, optimizer_name, 0.0
        self.progress.changed()
        tracker: _TrialTracker | None = None
        try:
            pause_for_tests("before_run", trial.number, self.stop.event)
            self.stop.check(trial.number)
            tracker = _TrialTracker(self, trial, optimizer_name, settings)
            self.stop.check(trial.number)
            return self._train(trial, optimizer_name, settings, tracker)
        except optuna.TrialPruned:
            tracker.end("KILLED", status_tag="pruned")  # type: ignore[union-attr]
            raise
        except KeyboardInterrupt:  # a stop request (or a second Ctrl-C) reached this trial
            _INTERRUPTED_LOGS.numbers.add(trial.number)
            trial.set_user_attr("hpo2.status", INTERRUPTED)
            trial.set_user_attr("hpo2.reason", f"{INTERRUPTED}: retried on resume")
            if tracker is not None:
                tracker.end("KILLED", reason=INTERRUPTED, status_tag=INTERRUPTED)
            raise TrialInterrupted(trial.number) from None
        except Exception as exc:
            trial.set_user_attr("hpo2.status", "failed")
            trial.set_user_attr("hpo2.reason", f"{type(exc).__name__}: {exc}"[:2000])
            if tracker is not None:
                tracker.end("FAILED", reason=f"{type(exc).__name__}: {exc}", status_tag="failed")
            # Whoever keeps the exception (Optuna's log, a log handler) must not keep the
            # failed trial's model and tensors alive: drop the finished frames' locals.
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _train(self, trial: optuna.Trial, optimizer_name: str, settings: dict[str, Any], tracker: _TrialTracker) -> float | list[float]:
        task = build_task(self.config.task.name, {**self.config.task.settings, "seed": self.config.seed})
        first_metric = self.config.objective[0].metric
        single = not self.config.multi_objective
        evaluations: list[Evaluation] = []

        flatness_batch = task.train.head(512).to(self.device)
        flatness: dict[str, float] = {"seconds": 0.0}

        def measure_flatness(evaluation: Evaluation) -> None:
            started = time.perf_counter()
            summary = flatness_summary(task.model, task.loss_fn, task.metric_fn, flatness_batch.x, flatness_batch.y,
                                       evaluation.valid_metric, task.higher_is_better, seed=self.config.seed)  # fmt: skip
            tracker.curvature(summary, evaluation.step)
            flatness.update(summary, step=evaluation.step, valid_metric=evaluation.valid_metric,
                            seconds=flatness["seconds"] + time.perf_counter() - started)  # fmt: skip
            trial.set_user_attr("hpo2.flatness", flatness)

        def on_step(step: int, diagnostics: dict[str, Any]) -> None:
            tracker.step(step, diagnostics)
            pause_for_tests("step", trial.number, self.stop.event)
            self.stop.check(trial.number)

        def report(evaluation: Evaluation) -> bool:
            self.stop.check(trial.number)
            index = len(evaluations)
            evaluations.append(evaluation)
            self.progress.current_epoch = evaluation.epoch
            self.progress.changed()
            tracker.epoch(evaluation)
            if not on_checkpoint(index):
                return False
            if (self.config.curvature_diagnostics and math.isfinite(evaluation.train_loss)
                    and curvature_due(flatness["seconds"], evaluation.wall_seconds, self.config.curvature_share)):
                measure_flatness(evaluation)
            if single and first_metric in ("valid_metric", "valid_loss", "train_loss"):
                value = getattr(evaluation, first_metric)
                if math.isfinite(value):
                    trial.report(value, step=index)
                    return trial.should_prune()
            return False

        budget, capped = self._trial_budget()
        result = run_training(
            task, {"name": optimizer_name, "settings": settings}, budget,
            seed=self.config.seed, device=self.device, report=report, on_step=on_step,
        )  # fmt: skip
        if capped and result.status == "completed" and result.wall_seconds >= budget.seconds:  # type: ignore[operator]
            result.status = "stopped"
            result.reason = f"the study's timeout ended the trial after {result.wall_seconds:.1f} s of training"
        final = result.final
        if self.config.curvature_diagnostics and final is not None and math.isfinite(final.train_loss) and flatness.get("step") != final.step:
            measure_flatness(final)
        trial.set_user_attr("hpo2.status", result.status)
        trial.set_user_attr("hpo2.reason", result.reason)
        trial.set_user_attr("hpo2.wall_seconds", result.wall_seconds)
        trial.set_user_attr("hpo2.grad_equivalents", result.grad_equivalents)
        trial.set_user_attr("hpo2.time_to_target_seconds", result.time_to_target_seconds)
        trial.set_user_attr("hpo2.time_to_target_grad_equivalents", result.time_to_target_grad_equivalents)
        if result.status in ("diverged", "stopped"):
            reason = result.reason if result.status == "diverged" else f"pruned: {result.reason}"
            tracker.end("KILLED", reason=reason, status_tag="diverged" if result.status == "diverged" else "pruned")
            raise optuna.TrialPruned(reason)
        values = [objective_value(o.metric, result) for o in self.config.objective]
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("hpo2.status", "diverged")
            tracker.end("KILLED", reason=f"non-finite objective {values}", status_tag="diverged")
            raise optuna.TrialPruned(f"non-finite objective {values}")
        tracker.end("FINISHED", reason=result.reason, status_tag=result.status, result=result)
        return values[0] if single else values


    def _trial_budget(self) -> tuple[Budget, bool]:
        """The study's budget, its seconds capped by the time the study's timeout leaves
        (True if the cap applies): an endless budget still ends with the study."""
        budget, left = self.config.budget, self._time_left()
        if budget.seconds is not None and budget.seconds <= left:
            return budget, False
        if math.isinf(left):
            return budget, False
        return budget.model_copy(update={"seconds": max(left, 1e-3)}), True


class _TrialTracker:
    """The nested MLflow run of one trial; times itself to keep tracking cheap."""

    def __init__(self, runner: StudyRunner, trial: optuna.Trial, optimizer: str, settings: dict[str, Any]) -> None:
        self.runner = runner
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.ended = False
        number = trial.number

        def created(run_id: str) -> None:  # now, or when a lost server comes back (then maybe after the trial)
            pause_for_tests("after_run", number, runner.stop.event)
            record_mlflow_run_id(runner.study, number, run_id)

        with self._timed():
            self.run = TrackedRun.create(
                runner.tracking_uri, runner.experiment, f"trial-{number}-{optimizer}",
                {"hpo2.study": runner.config.name, "hpo2.trial_number": str(number), "hpo2.optimizer": optimizer},
                parent_run_id=runner.parent.run_id, on_created=created,
            )  # fmt: skip
            self.run.log_params({"optimizer": optimizer, **flatten_params("", settings)})

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def epoch(self, e: Evaluation) -> None:
        with self._timed():
            self.run.log_metrics({"train_loss": e.train_loss, "valid_loss": e.valid_loss, "valid_metric": e.valid_metric,
                                  "wall_seconds": e.wall_seconds, "grad_equivalents": e.grad_equivalents, "epoch": e.epoch},
                                 step=e.step)
            self.run.flush()  # written in the background while the next epoch trains

    def step(self, step: int, diagnostics: dict[str, Any]) -> None:
        with self._timed():
            self.run.log_metrics({f"diag.{k}": v for k, v in diagnostics.items()}, step=step)

    def curvature(self, summary: dict[str, float], step: int) -> None:
        with self._timed():
            self.run.log_metrics({f"curvature.{k}": v for k, v in summary.items()}, step=step)

    def end(self, status: str, reason: str | None = None, status_tag: str = "", result: TrainResult | None = None) -> None:
        """Close the run once: FINISHED, FAILED or KILLED (pruned or diverged), with the reason."""
        if self.ended:
            return
        self.ended = True
        with self._timed():
            self.run.set_tags({"hpo2.status": status_tag or status.lower(), "hpo2.reason": reason or ""})
            if result is not None and result.time_to_target_seconds is not None:
                self.run.log_metrics({"time_to_target_seconds": result.time_to_target_seconds,
                                      "time_to_target_grad_equivalents": result.time_to_target_grad_equivalents}, step=0)
            total = time.perf_counter() - self.started
            self.run.log_metrics({"tracking_seconds": self.seconds, "tracking_fraction": self.seconds / max(total, 1e-9)}, step=0)
            if not self.run.end(status):
                self.runner.offline_runs.append(self.run)
            self.runner.retry_offline()
        self.runner.progress.tracking_seconds += self.seconds
        self.runner.progress.trial_seconds += time.perf_counter() - self.started
