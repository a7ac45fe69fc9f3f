"""Reading a study's results back: counts, the best trial, its exported config."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from hpo2.common.redact import redact_url
from hpo2.errors import SettingsError
from hpo2.optim import reuse_notes
from hpo2.study.config import StudyConfig, default_storage, storage_error
from hpo2.study.space import OPTIMIZER_PARAM, SearchSpace
from hpo2.tasks import TASKS
from hpo2.tasks.base import target_label


def load_study(config: StudyConfig, study_file: Path, run_command: str | None = None) -> optuna.Study:
    """The existing study of ``config`` (an error naming ``run_command``, by default
    ``hpo2 study run <study file>``, if it was never run)."""
    url = default_storage(config, study_file)
    try:
        return optuna.load_study(study_name=config.name, storage=url)
    except KeyError:
        raise SettingsError(
            f"study {config.name!r} has no trials yet in {redact_url(url)}: run "
            f"`{run_command or f'hpo2 study run {study_file}'}` first"
        ) from None
    except Exception as exc:  # any driver error: the URL is wrong, the server down, the file unreadable
        raise storage_error(url, exc) from None


RUN_ID_ATTR = "hpo2.mlflow_run_id"


def record_mlflow_run_id(study: optuna.Study, trial_number: int, run_id: str) -> None:
    """Link trial ``trial_number`` to its MLflow run.

    A running trial gets the user attribute ``hpo2.mlflow_run_id``; a finished one
    cannot be changed any more (Optuna refuses), so a run created after its trial
    ended -- the tracking server came back late, or ``hpo2 study sync`` sent it --
    is recorded on the study as ``hpo2.mlflow_run_id.<trial number>``.
    """
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, trial_number)
    try:
        storage.set_trial_user_attr(trial_id, RUN_ID_ATTR, run_id)
    except UpdateFinishedTrialError:
        study.set_user_attr(f"{RUN_ID_ATTR}.{trial_number}", run_id)


def mlflow_run_id(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """The MLflow run of ``trial`` (see :func:`record_mlflow_run_id`), if it has one."""
    return study.user_attrs.get(f"{RUN_ID_ATTR}.{trial.number}") or trial.user_attrs.get(RUN_ID_ATTR)


def round_values(values: Sequence[float] | None) -> str:
    """``[0.9666666388511658]`` -> ``0.96667``; several values joined with ", "."""
    if not values:
        return "-"
    return ", ".join(f"{v:.5g}" for v in values)


def state_counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (several)."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    return [study.best_trial] if len(study.directions) == 1 else study.best_trials


def best_per_optimizer(study: optuna.Study) -> dict[str, FrozenTrial]:
    """For each optimizer, its best complete trial (first objective)."""
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    best: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.params.get(OPTIMIZER_PARAM)
        if name is None:  # a trial added outside the search space names no optimizer
            continue
        current = best.get(name)
        if current is None or (t.values[0] > current.values[0] if maximize else t.values[0] < current.values[0]):
            best[name] = t
    return best


def ranked(study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` (complete ones) best first by the first objective; a tie goes to the
    earlier trial, as :attr:`optuna.Study.best_trial` has it."""
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(trials, key=lambda t: (sign * t.values[0], t.number))


def settings_text(trial: FrozenTrial) -> str:
    """The trial's optimizer settings as the CLI shows them: ``lr=0.0123, batch_size=None``
    (floats to 3 significant digits; a setting left unset is None, as in Python)."""
    name = trial.params.get(OPTIMIZER_PARAM)
    settings = {k.split(".", 1)[1]: v for k, v in trial.params.items() if k.startswith(f"{name}.")}
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())


def export_config(
    config: StudyConfig, trial: FrozenTrial, confirmation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The trial as a ``hpo2 train --config`` file (also what ``from_config`` and
    ``schedule_from_config`` take), with ``reuse``: what a loop of your own must honour
    (:func:`hpo2.optim.reuse_notes`), and its ``confirmation`` (mean ± std over new
    seeds, :func:`hpo2.study.confirm.export_block`) under ``study`` when it has one."""
    optimizer = SearchSpace(config).optimizer_config(trial.params)
    return {
        "task": config.task.model_dump(exclude_none=True),
        "optimizer": optimizer,
        "budget": config.budget.model_dump(exclude_none=True),
        "seed": config.seed,
        "device": config.device,
        "study": {"name": config.name, "trial": trial.number, "values": list(trial.values),
                  **({"confirmation": confirmation} if confirmation else {})},
        "reuse": reuse_notes(optimizer),
    }


def target_text(config: StudyConfig) -> str:
    """When the study's task counts as reached: ``valid accuracy >= 0.95`` (a built-in
    task's, or the ``target`` setting in its metric); a task of the user's own code
    without one keeps its code's."""
    target = config.task.settings.get("target")
    spec = TASKS.get(config.task.name) if config.task.name else None
    if spec is not None:
        return target_label(spec.metric, spec.higher_is_better, spec.target if target is None else target)
    return "the task's own, if its code sets one" if target is None else f"the task's metric at {target:g}"


def write_export(path: Path, exported: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(exported, sort_keys=False))
