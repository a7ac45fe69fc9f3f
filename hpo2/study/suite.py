"""A study over several tasks (a *suite*): one ordinary hpo2 study per task, all
with the same optimizer space, and performance profiles across them
(:mod:`hpo2.study.profiles`).

The suite file::

    name: small
    measure: grad_equivalents        # or seconds: what time-to-target is counted in
    tasks:
      - {task: digits_mlp, budget: {epochs: 2}, target: 0.9}
      - {task: logreg_breast_cancer, budget: {epochs: 10}, target: 0.95}
    optimizers: [sgd, adam, lbfgs]   # a study file's optimizers block, or
    # optimizers_from: quickstart    # the optimizers of a study (name or file)
    study: {n_trials: 6}             # what every task's study shares (any study-file field
                                     # but name, task, budget and optimizers)

Task ``i`` runs as study ``<suite>.<label>`` (label: the task's name unless
given) in one Optuna storage (``<suite>.optuna.db`` beside the suite file unless
``study.storage`` says otherwise) and one MLflow experiment (the suite's name),
so each is resumable and inspectable like any study; their parent runs are
nested under the suite's own MLflow run (tag ``hpo2.role = suite``).  A task's
``target`` becomes its task setting ``target``: the validation metric whose
first crossing is its time-to-target, which every trial records in its user
attributes (``hpo2.time_to_target_seconds`` / ``_grad_equivalents``, see
:mod:`hpo2.study.runner`).  The target a study ran with is kept on the study;
changing it later is refused (the recorded times would be for another target).

**Time-to-target of an optimizer on a task** is the least time-to-target over
all its trials on that task that recorded one, complete or pruned (a pruned
trial reached the target before it was stopped): AlgoPerf's external-tuning
rule, the fastest of the tuning trials (Dahl et al. 2023, section 4.4).  An
optimizer none of whose trials reached the target gets :math:`\\infty`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.trial import TrialState
from pydantic import Field, field_validator, model_validator

from hpo2.errors import SettingsError, did_you_mean
from hpo2.optim.registry import load_config_file
from hpo2.study.config import MAX_TRIALS, OptimizerChoice, Strict, StudyConfig, StudyName, load_study_config
from hpo2.study.locate import STUDY_SUFFIXES, find_study_file, search_folders, suite_files
from hpo2.study.profiles import ALGOPERF_TAU_MAX, PerformanceProfile, performance_profile
from hpo2.study.space import OPTIMIZER_PARAM
from hpo2.tasks.source import TaskSection
from hpo2.train.config import validate
from hpo2.train.loop import Budget

if TYPE_CHECKING:
    from hpo2.study.observer import StudyObserver
    from hpo2.study.runner import StudyReport, StudyRunner
    from hpo2.study.tracking import TrackedRun

#: study-file fields a suite sets itself, per task or at the top level
PER_TASK = {"name": "tasks[].label", "task": "tasks[].task", "budget": "tasks[].budget",
            "optimizers": "the suite's optimizers or optimizers_from"}  # fmt: skip
SHARED = [k for k in StudyConfig.model_fields if k not in PER_TASK]
MEASURES = {"grad_equivalents": "hpo2.time_to_target_grad_equivalents", "seconds": "hpo2.time_to_target_seconds"}
TASK_ATTR = "hpo2.suite_task"  # the study's task section (target included) when the suite first ran it


class SuiteTask(Strict):
    """One task of a suite: its budget, its target, optionally its own trial count."""

    task: TaskSection
    label: StudyName | None = None
    budget: Budget
    target: float | None = Field(default=None, allow_inf_nan=False)
    n_trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)

    @model_validator(mode="after")
    def _named(self) -> SuiteTask:
        if self.task.name is None and self.label is None:
            raise ValueError("a task given by its entrypoint needs a label (it names the task's study)")
        return self

    @property
    def name(self) -> str:
        return self.label or str(self.task.name)


class SuiteConfig(Strict):
    """A suite file: tasks, one optimizer space, and the study settings they share."""

    name: StudyName
    tasks: list[SuiteTask] = Field(min_length=1)
    optimizers: list[OptimizerChoice] | None = None
    optimizers_from: str | None = None
    study: dict[str, Any] = Field(default_factory=dict)
    measure: Literal["grad_equivalents", "seconds"] = "grad_equivalents"
    tau_max: float = Field(default=ALGOPERF_TAU_MAX, gt=1, le=1e6, allow_inf_nan=False)

    @field_validator("optimizers", mode="before")
    @classmethod
    def _optimizers(cls, value: Any) -> Any:
        return StudyConfig._optimizers(value)

    @field_validator("study")
    @classmethod
    def _study(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in PER_TASK:
                raise ValueError(f"{key!r} is set by the suite itself; give it in {PER_TASK[key]}")
            if key not in SHARED:
                hint = did_you_mean(key, SHARED)
                raise ValueError(f"unknown study setting {key!r}{hint}; allowed: {', '.join(SHARED)}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> SuiteConfig:
        if self.optimizers is not None and self.optimizers_from is not None:
            raise ValueError("give optimizers or optimizers_from, not both")
        labels = [t.name for t in self.tasks]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"tasks: {twice} appear(s) twice; give each a distinct label (tasks[].label)")
        return self


@dataclass
class Suite:
    """A validated suite file and the study of each of its tasks (same order)."""

    config: SuiteConfig
    path: Path
    studies: list[StudyConfig]

    @property
    def labels(self) -> list[str]:
        return [t.name for t in self.config.tasks]

    @property
    def optimizers(self) -> list[str]:
        return [o.name for o in self.studies[0].optimizers]

    @property
    def tracking_uri(self) -> str:
        from hpo2.study.config import default_tracking_uri

        return default_tracking_uri(self.studies[0], self.path)

    @property
    def experiment(self) -> str:
        return self.studies[0].experiment or self.config.name


def find_suite_file(name_or_file: str) -> Path:
    """A suite file by path, or the file in :func:`~hpo2.study.locate.search_folders` whose ``name`` it is."""
    candidate = Path(name_or_file)
    if candidate.suffix in STUDY_SUFFIXES or candidate.is_file():
        if not candidate.is_file():
            raise SettingsError(f"suite file {name_or_file!r} does not exist")
        return candidate
    for folder in search_folders():
        for file, data in suite_files(folder):
            if data.get("name") == name_or_file:
                return file
    looked = ", ".join(map(str, search_folders()))
    raise SettingsError(f"no suite named {name_or_file!r} in {looked}; pass the suite file")


def _shared_optimizers(config: SuiteConfig, suite_file: Path) -> list[OptimizerChoice] | None:
    """The suite's optimizers, or those of the study ``optimizers_from`` names (a
    path relative to the suite file, else a study name or file as ``hpo2 study`` finds it)."""
    if config.optimizers_from is None:
        return config.optimizers
    beside = suite_file.parent / config.optimizers_from
    try:
        study_file = beside if beside.is_file() else find_study_file(config.optimizers_from)
        return list(load_study_config(study_file)[0].optimizers)
    except SettingsError as exc:
        raise SettingsError(f"{suite_file}: optimizers_from = {config.optimizers_from!r}: {exc}") from None


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Read and validate a suite file and build (and validate) each task's study;
    ``overrides`` (CLI options, None ones ignored) go into every study.  Errors name
    the field, the value and what is allowed."""
    path = Path(path)
    raw = load_config_file(path)
    if "task" in raw and "tasks" not in raw:
        raise SettingsError(f"{path} is a study file (it has one task): run it with `hpo2 study run {path}`; "
                            "a suite file has a list of tasks (see studies/suite_small.yaml)")
    config = validate(SuiteConfig, raw, str(path))
    optimizers = _shared_optimizers(config, path)
    folder = path.resolve().parent
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    flags = f" (with command-line {', '.join('--' + k.replace('_', '-') for k in given)})" if given else ""
    studies = []
    for i, task in enumerate(config.tasks):
        settings = dict(task.task.settings)
        if task.target is not None:
            settings["target"] = task.target
        section = task.task.model_copy(update={"settings": settings}).anchored(folder)
        section.check_builtin(where=f"tasks.{i}.task")
        data: dict[str, Any] = {
            "storage": f"sqlite:///{folder / (config.name + '.optuna.db')}",
            "experiment": config.name,
            **config.study,
            "name": f"{config.name}.{task.name}",
            "task": section.model_dump(exclude_none=True),
            "budget": task.budget,
            **({} if task.n_trials is None else {"n_trials": task.n_trials}),
            **({} if optimizers is None else {"optimizers": optimizers}),
            **given,
        }
        studies.append(validate(StudyConfig, data, f"{path}{flags}, the study of tasks.{i} ({task.name})"))
    return Suite(config, path.resolve(), studies)


def check_task_unchanged(study: optuna.Study, config: StudyConfig) -> None:
    """Keep the study's task section (its target included) on first run; refuse to
    resume with another (the time-to-target of its trials would be for another target)."""
    current = json.dumps(config.task.model_dump(exclude_none=True), sort_keys=True)
    recorded = study.user_attrs.get(TASK_ATTR)
    if recorded is None:
        study.set_user_attr(TASK_ATTR, current)
    elif recorded != current:
        raise SettingsError(
            f"study {config.name!r} ran with task {recorded}, the suite now gives {current}: its trials' "
            "time-to-target is for the first; restore the task's target and settings, or give the task a new label"
        )


@dataclass(frozen=True)
class TaskResult:
    """Each optimizer's time-to-target on one task and the trial that set it."""

    label: str
    study: str
    times: dict[str, float]  # math.inf: not reached
    trials: dict[str, int | None]
    n_trials: dict[str, int]  # finished trials per optimizer


def task_result(study: optuna.Study, label: str, optimizers: list[str], measure: str) -> TaskResult:
    """The least recorded time-to-target (in ``measure``) per optimizer over the
    study's complete and pruned trials (module docstring)."""
    key = MEASURES[measure]
    times = {o: math.inf for o in optimizers}
    trials: dict[str, int | None] = {o: None for o in optimizers}
    counts = {o: 0 for o in optimizers}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        name = t.params.get(OPTIMIZER_PARAM)
        if name not in times:
            continue
        counts[name] += 1
        value = t.user_attrs.get(key)
        if value is not None and value < times[name]:
            times[name], trials[name] = float(value), t.number
    return TaskResult(label, study.study_name, times, trials, counts)


def suite_results(suite: Suite) -> tuple[list[TaskResult], list[str]]:
    """The result of every task whose study exists, and the labels of those never run."""
    from hpo2.study.catalog import open_existing

    results, missing = [], []
    for label, config in zip(suite.labels, suite.studies, strict=True):
        study = open_existing(config, suite.path)
        if study is None:
            missing.append(label)
        else:
            results.append(task_result(study, label, suite.optimizers, suite.config.measure))
    return results, missing


def suite_profile(suite: Suite, results: list[TaskResult]) -> PerformanceProfile:
    """The performance profile of the suite's optimizers over ``results``' tasks."""
    times = {o: {r.label: r.times[o] for r in results} for o in suite.optimizers}
    return performance_profile(times, suite.config.tau_max)


def run_suite(
    suite: Suite,
    run_study: Callable[[StudyRunner], None],
    announce: Callable[[str], None] = lambda line: None,
    observer: StudyObserver | None = None,
    report: StudyReport | None = None,
) -> str | None:
    """Run (or resume) the study of every task, each nested under the suite's MLflow
    run; return that run's id (left RUNNING: the report closes it; None if the
    tracking server went away after the check, when the run is not created).

    ``run_study`` gets each opened :class:`~hpo2.study.runner.StudyRunner` and runs
    it (the CLI shows its live table); ``observer`` watches every study and ``report``
    renders the report of those whose ``report`` setting is on; a study whose trial budget is already spent and whose
    run finished is skipped.  :class:`~hpo2.study.recovery.StudyInterrupted` ends the
    suite's run KILLED and propagates (rerunning resumes where it stopped)."""
    from hpo2.study.catalog import open_existing
    from hpo2.study.tracking import check_reachable

    check_reachable(suite.tracking_uri)  # before the suite's run is created
    existing = [open_existing(config, suite.path) for config in suite.studies]
    for study, config in zip(existing, suite.studies, strict=True):
        if study is not None:
            check_task_unchanged(study, config)  # before anything is written
    parent = _suite_parent_run(suite)
    for i, (label, config, study) in enumerate(zip(suite.labels, suite.studies, existing, strict=True), start=1):
        if study is not None and _study_done(study, config, suite.path):
            announce(f"task {i}/{len(suite.studies)} {label}: study {config.name} is done, skipped")
            continue
        announce(f"task {i}/{len(suite.studies)} {label}: study {config.name} ({config.task.label}, target "
                 f"{config.task.settings.get('target', 'the task default')})")
        runner = _open_task_study(suite, config, parent, announce, observer, report)
        try:
            run_study(runner)
        except BaseException:
            parent.end("KILLED")
            raise
    return parent.run_id


def _suite_parent_run(suite: Suite) -> TrackedRun:
    """Create (or find again) the suite's own MLflow run (tag ``hpo2.role = suite``) and log the
    suite's params to it."""
    from hpo2.study.tracking import study_parent_run

    artifacts = str(suite.path.parent / "mlartifacts") if suite.tracking_uri.startswith("sqlite") else None
    parent = study_parent_run(suite.tracking_uri, suite.experiment, suite.config.name,
                              {"hpo2.tasks": ",".join(suite.labels)}, artifacts, role="suite")  # fmt: skip
    parent.log_params({"tasks": ",".join(suite.labels), "optimizers": ",".join(suite.optimizers),
                       "measure": suite.config.measure, "sampler": suite.studies[0].sampler.name})  # fmt: skip
    return parent


def _study_done(study: optuna.Study, config: StudyConfig, suite_path: Path) -> bool:
    """Whether a task's existing study has spent its trial budget and its run finished (skipped then)."""
    from hpo2.study.catalog import budget_spent, study_closed
    from hpo2.study.config import default_storage

    spent = budget_spent(study, default_storage(config, suite_path), config.n_trials)
    return bool(spent) and study_closed(config, suite_path)


def _open_task_study(
    suite: Suite, config: StudyConfig, parent: TrackedRun, announce: Callable[[str], None],
    observer: StudyObserver | None, report: StudyReport | None,
) -> StudyRunner:  # fmt: skip
    """Open one task's study (announcing its warm start's notes), check its task is the one it ran
    with, and nest its MLflow parent run under the suite's run ``parent``."""
    from hpo2.study.runner import StudyRunner

    runner = StudyRunner(config, suite.path, observer, report if config.report else None).open()
    for note in runner.warm_start.notes if runner.warm_start is not None else []:
        announce(note)
    check_task_unchanged(runner.study, config)
    runner.parent.set_tags({"mlflow.parentRunId": parent.run_id, "hpo2.suite": suite.config.name})
    return runner
