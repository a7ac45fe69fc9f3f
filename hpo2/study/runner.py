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
and every finished trial survive.

Storage: any Optuna URL.  RDB storages (sqlite, PostgreSQL) get a heartbeat, so a
trial whose worker was killed is marked failed and retried by the next run
(``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import hashlib
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

from hpo2.databases import check_sqlite_writable
from hpo2.diagnostics import flatness_summary
from hpo2.optim.registry import load_config_file
from hpo2.optim.settings import SettingsError
from hpo2.study.budget import TrialBudget, file_lock
from hpo2.redact import redact_url, sanitized_study_text
from hpo2.study.config import StudyConfig, default_storage, default_tracking_uri, storage_error
from hpo2.study.samplers import build_pruner, build_sampler
from hpo2.study.space import SearchSpace
from hpo2.tasks import build_task
from hpo2.tracking import TrackedRun, check_reachable, flatten_params, study_parent_run
from hpo2.train import Evaluation, TrainResult, resolve_device, run_training

DIRECTIONS = {"valid_loss": "minimize", "train_loss": "minimize", "wall_seconds": "minimize", "grad_equivalents": "minimize"}


def open_storage(
    url: str, config: StudyConfig, on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
) -> optuna.storages.BaseStorage | str:
    """An Optuna storage for ``url``; RDB URLs get heartbeats and stale-trial retry
    (``on_stale`` runs too, for each trial whose worker stopped beating).
    ``journal:PATH`` opens a journal file (several processes on one machine, no heartbeat)."""
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
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
        self.offline_runs: list[TrackedRun] = []  # runs the tracking server has not received yet
        probe = build_task(config.task.name, config.task.settings)
        self.directions = objective_directions(config, probe.higher_is_better)
        # Workers starting together on one machine would race to create the sqlite
        # tables of Optuna and MLflow: the first one creates them, the others wait.
        with file_lock(init_lock_path(study_file, config.name)):
            self.study = optuna.create_study(
                study_name=config.name,
                storage=open_storage(self.storage_url, config, self._close_lost_trial_run),
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

    def _close_lost_trial_run(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A worker died mid-trial: its MLflow run must not stay RUNNING forever."""
        run_id = trial.user_attrs.get("hpo2.mlflow_run_id")
        if run_id is None:
            return
        run = TrackedRun(self.parent.client, run_id, name=f"trial-{trial.number}")
        run.set_tags({"hpo2.status": "failed", "hpo2.reason": "worker lost: no heartbeat; the trial is retried"})
        if not run.end("KILLED"):
            self.offline_runs.append(run)

    def start(self) -> None:
        """Log the study's params and file to its parent run; enqueue the paper defaults."""
        self.parent.log_params({"task": self.config.task.name, "sampler": self.config.sampler.name,
                                "pruner": self.config.pruner.name, "optimizers": ",".join(self.space.names),
                                "objective": ",".join(o.metric for o in self.config.objective)})
        self.log_study_file()
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
        ``timeout`` seconds have passed; ``jobs`` threads run trials at once."""
        self.start()
        budget = TrialBudget(self.study, self.storage_url, n_trials if n_trials is not None else self.config.n_trials)
        limit = timeout if timeout is not None else self.config.timeout
        deadline = None if limit is None else time.monotonic() + limit

        def admitted(trial: optuna.Trial) -> float | list[float]:
            budget.release()  # the trial now exists in storage: other workers may count it
            return self.objective(trial)

        def work() -> None:
            while (deadline is None or time.monotonic() < deadline) and budget.admit():
                try:
                    self.study.optimize(admitted, n_trials=1, catch=(Exception,), gc_after_trial=True,
                                        callbacks=[lambda study, trial: self.progress.changed()])
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
        self.finish()
        return self.study

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

            render_study_report(self.study, self.config, self.tracking_uri, self.parent.run_id)
        if not self.parent.end("FINISHED"):
            self.offline_runs.append(self.parent)
        self.retry_offline()
        if self.offline_runs:
            folder = self.study_file.parent / "mlflow-unsent"
            paths = [run.spool(folder) for run in self.offline_runs]
            warnings.warn(
                f"MLflow tracking at {redact_url(self.tracking_uri)} stayed unreachable: {len(paths)} run(s) were not sent; "
                f"their params, metrics and tags are saved in {folder}",
                RuntimeWarning,
                stacklevel=2,
            )

    def retry_offline(self) -> None:
        """Send what a lost tracking server missed, now that it may be back."""
        self.offline_runs = [run for run in self.offline_runs if not run.retry()]

    # -- one trial
    def objective(self, trial: optuna.Trial) -> float | list[float]:
        optimizer_name, settings = self.space.suggest(trial)
        self.progress.current_trial, self.progress.current_optimizer, self.progress.current_epoch = trial.number, optimizer_name, 0.0
        self.progress.changed()
        tracker = _TrialTracker(self, trial, optimizer_name, settings)
        try:
            return self._train(trial, optimizer_name, settings, tracker)
        except optuna.TrialPruned:
            tracker.end("KILLED", status_tag="pruned")
            raise
        except Exception as exc:
            trial.set_user_attr("hpo2.status", "failed")
            trial.set_user_attr("hpo2.reason", f"{type(exc).__name__}: {exc}"[:2000])
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

        def report(evaluation: Evaluation) -> bool:
            index = len(evaluations)
            evaluations.append(evaluation)
            self.progress.current_epoch = evaluation.epoch
            self.progress.changed()
            tracker.epoch(evaluation)
            if not on_checkpoint(index):
                return False
            if self.config.curvature_diagnostics and math.isfinite(evaluation.train_loss):
                measure_flatness(evaluation)
            if single and first_metric in ("valid_metric", "valid_loss", "train_loss"):
                value = getattr(evaluation, first_metric)
                if math.isfinite(value):
                    trial.report(value, step=index)
                    return trial.should_prune()
            return False

        result = run_training(
            task, {"name": optimizer_name, "settings": settings}, self.config.budget,
            seed=self.config.seed, device=self.device, report=report, on_step=tracker.step,
        )  # fmt: skip
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


class _TrialTracker:
    """The nested MLflow run of one trial; times itself to keep tracking cheap."""

    def __init__(self, runner: StudyRunner, trial: optuna.Trial, optimizer: str, settings: dict[str, Any]) -> None:
        self.runner = runner
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.ended = False
        with self._timed():
            self.run = TrackedRun.create(
                runner.tracking_uri, runner.experiment, f"trial-{trial.number}-{optimizer}",
                {"hpo2.study": runner.config.name, "hpo2.trial_number": str(trial.number), "hpo2.optimizer": optimizer},
                parent_run_id=runner.parent.run_id,
            )  # fmt: skip
            self.run.log_params({"optimizer": optimizer, **flatten_params("", settings)})
        if self.run.run_id is not None:
            trial.set_user_attr("hpo2.mlflow_run_id", self.run.run_id)

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
