"""What one trial's training tells the outside, and how the trial ends.

:class:`TrialReporter` is the pair of callbacks :func:`hpo2.train.run_training`
takes (``on_step``, ``report``): each step goes to the trial's MLflow run and is a
safe point for a stop request; each evaluation goes to the observer and MLflow,
and at the checkpoints (:mod:`hpo2.study.checkpoints`) to Optuna's pruner and the
flatness measurement.  :func:`record_result` writes the run's outcome to the
trial's attributes; :func:`conclude_trial` turns it into Optuna's answer (values,
or :class:`optuna.TrialPruned` with the reason) and closes the MLflow run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch

from hpo2.study.checkpoints import curvature_due, on_checkpoint
from hpo2.study.config import StudyConfig
from hpo2.study.objectives import objective_value
from hpo2.study.observer import StudyObserver
from hpo2.study.recovery import StopRequest, pause_for_tests
from hpo2.study.trial_tracking import TrialTracker
from hpo2.tasks import Task
from hpo2.train.diagnostics import flatness_summary
from hpo2.train.loop import Evaluation, TrainResult

#: ``end_run(tracker, status, **details)``: close a trial's MLflow run once (the runner keeps unsent runs)
EndRun = Callable[..., None]
#: the trial attribute naming the seed a trial trained with
SEED_ATTR = "hpo2.seed"


class TrialReporter:
    """The training callbacks of one trial (see the module docstring).

    The flatness measurement (:func:`~hpo2.train.diagnostics.flatness_summary` on the
    first 512 training samples) runs at a checkpoint while it took at most
    ``config.curvature_share`` of the trial's time, and once at the end; the last one
    is the trial's ``hpo2.flatness`` attribute, with ``seconds`` the time all took."""

    def __init__(
        self, config: StudyConfig, trial: optuna.Trial, tracker: TrialTracker, task: Task, seed: int,
        device: torch.device, stop: StopRequest, observer: StudyObserver,
    ) -> None:  # fmt: skip
        self.config, self.trial, self.tracker, self.task, self.seed = config, trial, tracker, task, seed
        self.stop, self.observer = stop, observer
        self.evaluations: list[Evaluation] = []
        self.flatness_batch = task.first_samples(task.train, 512).to(device)
        self.flatness: dict[str, float] = {"seconds": 0.0}
        first_metric = config.objective[0].metric
        single = not config.multi_objective and first_metric in ("valid_metric", "valid_loss", "train_loss")
        self.pruned_metric = first_metric if single else None  # what goes to Optuna's pruner, if anything

    def on_step(self, step: int, diagnostics: dict[str, Any]) -> None:
        """After each training step: log it, then stop here if a stop was requested."""
        self.tracker.step(step, diagnostics)
        pause_for_tests("step", self.trial.number, self.stop.event)
        self.stop.check(self.trial.number)

    def report(self, evaluation: Evaluation) -> bool:
        """After each evaluation: log it; at a checkpoint, measure flatness (if due) and ask
        the pruner.  True: prune the trial."""
        self.stop.check(self.trial.number)
        index = len(self.evaluations)
        self.evaluations.append(evaluation)
        self.observer.trial_evaluated(self.trial.number, evaluation.epoch)
        self.tracker.epoch(evaluation)
        if not on_checkpoint(index):
            return False
        if (self.config.curvature_diagnostics and math.isfinite(evaluation.train_loss)
                and curvature_due(self.flatness["seconds"], evaluation.wall_seconds, self.config.curvature_share)):
            self.measure_flatness(evaluation)
        if self.pruned_metric is not None:
            value = getattr(evaluation, self.pruned_metric)
            if math.isfinite(value):
                self.trial.report(value, step=index)
                return self.trial.should_prune()
        return False

    def measure_flatness(self, evaluation: Evaluation) -> None:
        """Measure flatness at ``evaluation``; log it and keep it as the trial's ``hpo2.flatness``."""
        started = time.perf_counter()
        task = self.task
        summary = flatness_summary(
            task.model, task.loss_fn, task.metric_fn, self.flatness_batch.x, self.flatness_batch.y,
            evaluation.valid_metric, task.higher_is_better, seed=self.seed,
        )  # fmt: skip
        self.tracker.curvature(summary, evaluation.step)
        self.flatness.update(summary, step=evaluation.step, valid_metric=evaluation.valid_metric,
                             seconds=self.flatness["seconds"] + time.perf_counter() - started)  # fmt: skip
        self.trial.set_user_attr("hpo2.flatness", self.flatness)

    def measure_final(self, final: Evaluation | None) -> None:
        """The end-of-trial flatness, unless the last checkpoint measured it already."""
        if (self.config.curvature_diagnostics and final is not None and math.isfinite(final.train_loss)
                and self.flatness.get("step") != final.step):
            self.measure_flatness(final)


def record_result(trial: optuna.Trial, result: TrainResult, seed: int) -> None:
    """The run's outcome as the trial's attributes: status and reason, cost, time-to-target, seed."""
    trial.set_user_attr("hpo2.status", result.status)
    trial.set_user_attr("hpo2.reason", result.reason)
    trial.set_user_attr("hpo2.wall_seconds", result.wall_seconds)
    trial.set_user_attr("hpo2.grad_equivalents", result.grad_equivalents)
    trial.set_user_attr("hpo2.time_to_target_seconds", result.time_to_target_seconds)
    trial.set_user_attr("hpo2.time_to_target_grad_equivalents", result.time_to_target_grad_equivalents)
    trial.set_user_attr(SEED_ATTR, seed)


def conclude_trial(
    config: StudyConfig, trial: optuna.Trial, tracker: TrialTracker, result: TrainResult, end_run: EndRun
) -> float | list[float]:
    """The trial's objective value(s), its MLflow run closed FINISHED; a diverged or
    stopped run, or a non-finite objective, closes it KILLED and raises
    :class:`optuna.TrialPruned` with the reason."""
    if result.status in ("diverged", "stopped"):
        reason = result.reason if result.status == "diverged" else f"pruned: {result.reason}"
        end_run(tracker, "KILLED", reason=reason, status_tag="diverged" if result.status == "diverged" else "pruned")
        raise optuna.TrialPruned(reason)
    values = [objective_value(o.metric, result) for o in config.objective]
    if not all(math.isfinite(v) for v in values):
        trial.set_user_attr("hpo2.status", "diverged")
        end_run(tracker, "KILLED", reason=f"non-finite objective {values}", status_tag="diverged")
        raise optuna.TrialPruned(f"non-finite objective {values}")
    end_run(tracker, "FINISHED", reason=result.reason, status_tag=result.status, result=result)
    return values[0] if not config.multi_objective else values
