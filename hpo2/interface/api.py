"""hpo2 from Python: run a study from a notebook or a script, with the CLI's semantics.

:func:`run_study` does what ``hpo2 study run FILE`` does -- the same storage
(sqlite beside the study file unless the file or an argument says otherwise),
resume (a rerun continues to ``n_trials``; one whose trials are all done runs
nothing), MLflow tracking (a parent run per study, a nested run per trial) and
report -- and returns the Optuna study with the best trial as a
``hpo2 train --config`` mapping::

    import hpo2

    def build(hidden: int = 64, seed: int = 0) -> hpo2.Task:
        ...

    result = hpo2.run_study("studies/mine.yaml", task=build, n_trials=20)
    result.study.best_value, result.best["optimizer"]
    optimizer = hpo2.optim.from_config(result.best["optimizer"], model.parameters())

Names follow Optuna's: ``n_trials``, ``timeout``, ``storage``; the return value
carries the :class:`optuna.Study` itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo2.interface.report import render_study_report
from hpo2.optim.registry import load_config_file
from hpo2.study.catalog import budget_spent, open_existing, study_closed
from hpo2.study.config import StudyConfig, default_storage, load_study_config
from hpo2.study.results import best_trials, export_config
from hpo2.study.runner import StudyRunner
from hpo2.tasks.source import TaskBuilder, entrypoint_for


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` gives back.

    Attributes:
        study: the Optuna study (every trial, its params and user attributes).
        config: the validated study file, with the arguments' overrides.
        best: the best trial as a ``hpo2 train --config`` mapping (``task``, ``optimizer``,
            ``budget``...; its ``optimizer`` is what :func:`hpo2.optim.from_config` takes),
            or None while no trial has completed.  With several objectives: the first
            trial of the Pareto front.
        study_file: the study file, resolved.
    """

    study: optuna.Study
    config: StudyConfig
    best: dict[str, Any] | None
    study_file: Path


def run_study(
    study_file: str | Path,
    *,
    task: TaskBuilder | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    device: str | None = None,
    report: bool | None = None,
) -> StudyResult:
    """Create or resume the study of ``study_file`` and run its trials, as ``hpo2 study run`` does.

    Args:
        study_file: the study's YAML file (its ``task`` section names an entrypoint or a
            built-in task; with ``task=`` given it may be left out, and only its ``settings`` are used).
        task: a function that returns a :class:`hpo2.Task` (see :mod:`hpo2.tasks.source` for
            how it declares its settings); it replaces the file's task.  The study records it
            as ``module:qualname``, so an exported config names it (a function defined in a
            notebook or ``__main__`` cannot be imported back by ``hpo2 train``).
        n_trials, timeout, storage, tracking_uri, device: override the file's values, as the
            CLI's options do (``n_trials`` is the total to reach; the count continues on resume).
        report: render the study's report at the end (default: the file's ``report``).

    Raises:
        SettingsError: a bad file, argument, store or task (one line naming the field).
        hpo2.study.recovery.StudyInterrupted: after Ctrl-C / SIGTERM; rerun to resume.
    """
    overrides: dict[str, Any] = {"n_trials": n_trials, "timeout": timeout, "storage": storage,
                                 "tracking_uri": tracking_uri, "device": device, "report": report}
    if task is not None:  # the function replaces the file's task (which may be left out); its settings stay
        section = load_config_file(study_file).get("task")
        settings = section.get("settings", {}) if isinstance(section, dict) else {}
        overrides["task"] = {"entrypoint": entrypoint_for(task), "settings": settings}
    config, path = load_study_config(Path(study_file), overrides)
    if not _already_done(config, path):
        with warnings.catch_warnings():  # hpo2 uses Optuna's heartbeat and samplers on purpose
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            runner = StudyRunner(config, path, report=render_study_report if config.report else None, task=task)
            runner.run()
        config = runner.config
    study = optuna.load_study(study_name=config.name, storage=default_storage(config, path))
    best = best_trials(study)
    return StudyResult(study, config, export_config(config, best[0]) if best else None, path)


def _already_done(config: StudyConfig, path: Path) -> bool:
    """A study whose run ended and whose ``n_trials`` are done runs nothing (``hpo2 study run``'s "nothing to do")."""
    if config.n_trials is None:
        return False
    try:
        study = open_existing(config, path)
    except Exception:  # noqa: BLE001 -- any driver's error: the run that follows reports it as one SettingsError
        return False
    if study is None or not study_closed(config, path):
        return False
    return budget_spent(study, default_storage(config, path), config.n_trials) is not None
