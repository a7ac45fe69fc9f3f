"""The studies of a project: which exist, how far each got, and deleting one.

A project's studies are those of its study files and, for each suite file, the
study of each of its tasks (``<suite>.<task label>``, :mod:`hpo2.study.lookup`).

Reading never creates anything: a sqlite or journal storage whose file does not
exist is a study that was never run (``optuna.load_study`` on a missing sqlite
file would create an empty database).  Deleting a study removes exactly its
Optuna study and its MLflow runs (the parent run and every trial's nested run,
found by the ``hpo2.study`` tag), those of its confirmation stage
(``<name>.confirm``), and its experiment when no other run is left in it;
MLflow deletes softly (the runs go to the UI's trash; the experiment,
renamed ``<name> (deleted <time>)``, too) and a later run of the same study
starts a fresh experiment.  Study files, other studies and their
runs are not touched.  A study with RUNNING trials is not deleted unless forced
(:meth:`Deletion.refusal`): a worker probably runs them (a trial silent past its
heartbeat's grace period is not counted: its worker died).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo2.common.databases import local_file
from hpo2.common.redact import redact_url
from hpo2.study.budget import TrialBudget
from hpo2.study.config import StudyConfig, default_storage, default_tracking_uri
from hpo2.study.confirm import confirm_study_name
from hpo2.study.locate import study_files, suite_files
from hpo2.study.storage import open_journal, stale_trial_numbers, study_init_lock

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_existing(config: StudyConfig, study_file: Path) -> optuna.Study | None:
    """The study of ``config`` if its storage holds it, else None (nothing is created)."""
    url = default_storage(config, study_file)
    local = local_file(url)
    if local is not None and not local.is_file():
        return None
    # opening an RDB storage creates Optuna's tables if missing: not while a starting worker does
    with study_init_lock(url, study_file, config.name):
        try:
            return optuna.load_study(study_name=config.name, storage=open_journal(url) or url)
        except KeyError:
            return None


def study_closed(config: StudyConfig, study_file: Path) -> bool:
    """Whether the study's MLflow parent run ended FINISHED (a run killed during its
    final report is not: a rerun must finish it).  Nothing is created."""
    uri = default_tracking_uri(config, study_file)
    local = local_file(uri)
    if local is not None and not local.is_file():
        return False
    from hpo2.study.tracking import find_study_run

    client = MlflowClient(uri)
    experiment = config.experiment or config.name
    if client.get_experiment_by_name(experiment) is None:
        return False
    run_id = find_study_run(client, experiment, config.name)
    return run_id is not None and client.get_run(run_id).info.status == "FINISHED"


def budget_spent(study: optuna.Study, storage_url: str, limit: int | None) -> int | None:
    """How many trials count toward ``limit`` when the budget is spent and nothing
    runs or waits (a rerun has nothing to do), else None."""
    if limit is None:
        return None
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in study.get_trials(deepcopy=False)):
        return None
    counted = TrialBudget(study, storage_url, limit).counted()
    return counted if counted >= limit else None


@dataclass(frozen=True)
class StudyRow:
    """One line of ``hpo2 study list``."""

    name: str
    task: str
    storage: str
    finished: int | None  # None: never run, or the storage could not be read
    n_trials: int | None
    best: str
    readable: bool = True


def list_studies(folder: Path) -> list[StudyRow]:
    """Every valid study file in ``folder`` with its storage's progress, then the study
    of each task of every valid suite file there (``<suite>.<label>``)."""
    from hpo2.errors import SettingsError
    from hpo2.study.config import load_study_config
    from hpo2.study.suite import load_suite

    defined: list[tuple[StudyConfig, Path]] = []
    for file, _ in study_files(folder):
        try:
            defined.append(load_study_config(file))
        except SettingsError:
            continue
    for file, _ in suite_files(folder):
        try:
            suite = load_suite(file)
        except SettingsError:
            continue
        defined += [(config, suite.path) for config in suite.studies]
    return [_row(config, path) for config, path in defined]


def _row(config: StudyConfig, path: Path) -> StudyRow:
    from hpo2.study.results import best_trials, round_values

    finished, best, readable = None, "-", True
    try:
        study = open_existing(config, path)
    except Exception as exc:  # noqa: BLE001 -- any driver's error (server down, no driver, bad URL): list the rest
        study, best, readable = None, f"storage unreadable ({type(exc).__name__})", False
    if study is not None:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        front = best_trials(study)
        if len(front) == 1:
            best = f"{round_values(front[0].values)} ({front[0].params.get('optimizer')})"
        elif front:
            best = f"Pareto front of {len(front)}"
    return StudyRow(config.name, config.task.label, redact_url(default_storage(config, path)),
                    finished, config.n_trials, best, readable)  # fmt: skip


@dataclass
class Deletion:
    """What deleting one study removes; :meth:`execute` removes it."""

    config: StudyConfig
    storage_url: str
    tracking_uri: str
    n_trials: int | None = None  # None: no Optuna study
    running: int = 0  # RUNNING trials a worker probably still runs (those past their heartbeat not counted)
    run_ids: list[str] = field(default_factory=list)
    experiment_id: str | None = None  # set when the experiment holds nothing else

    @classmethod
    def plan(cls, config: StudyConfig, study_file: Path) -> Deletion:
        out = cls(config, default_storage(config, study_file), default_tracking_uri(config, study_file))
        study = open_existing(config, study_file)
        if study is not None:
            out.n_trials = len(study.get_trials(deepcopy=False))
            running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            if running:
                out.running = len(running - stale_trial_numbers(study, out.storage_url, config))
        local = local_file(out.tracking_uri)
        if local is not None and not local.is_file():
            return out
        client = MlflowClient(out.tracking_uri)
        experiment = client.get_experiment_by_name(config.experiment or config.name)
        if experiment is None or experiment.lifecycle_stage != "active":
            return out
        out.run_ids = [run_id for name in (config.name, confirm_study_name(config.name))  # its confirmation's too
                       for run_id in _run_ids(client, experiment.experiment_id, f"tags.`hpo2.study` = '{name}'")]
        others = set(_run_ids(client, experiment.experiment_id, "")) - set(out.run_ids)
        if not others:
            out.experiment_id = experiment.experiment_id
        return out

    @property
    def empty(self) -> bool:
        return self.n_trials is None and not self.run_ids

    def describe(self) -> str:
        parts = []
        if self.n_trials is not None:
            parts.append(
                f"the Optuna study {self.config.name!r} ({self.n_trials} trials) in {redact_url(self.storage_url)}"
            )
        if self.run_ids:
            parts.append(f"{len(self.run_ids)} MLflow runs in {redact_url(self.tracking_uri)}")
        if self.experiment_id is not None:
            parts.append(f"the MLflow experiment {self.config.experiment or self.config.name!r}")
        return ", ".join(parts)

    def refusal(self) -> str:
        """Why the study must not be deleted now (trials are running), "" when it may be."""
        if not self.running:
            return ""
        trials = "1 trial" if self.running == 1 else f"{self.running} trials"
        return (f"study {self.config.name!r} has {trials} RUNNING: a worker is probably running it (deleting the "
                "study would kill its trials and its later runs would land in a deleted experiment); stop the "
                "worker first (Ctrl-C), or delete anyway with --force; nothing deleted")

    def execute(self) -> None:
        if self.n_trials is not None:
            storage = open_journal(self.storage_url) or self.storage_url
            optuna.delete_study(study_name=self.config.name, storage=storage)
            with contextlib.suppress(KeyError):  # its confirmation stage, if it started
                optuna.delete_study(study_name=confirm_study_name(self.config.name), storage=storage)
        if self.run_ids:
            client = MlflowClient(self.tracking_uri)
            for run_id in self.run_ids:
                client.delete_run(run_id)
            if self.experiment_id is not None:
                # Renamed first: restoring a deleted experiment would bring its runs back, and a
                # deleted experiment keeps its name, so the study could not create it again.
                stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
                client.rename_experiment(
                    self.experiment_id, f"{self.config.experiment or self.config.name} (deleted {stamp})"
                )
                client.delete_experiment(self.experiment_id)


def _run_ids(client: MlflowClient, experiment_id: str, filter_string: str) -> list[str]:
    """Every active run of the experiment that matches ``filter_string`` (all pages)."""
    ids: list[str] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token
        )
        ids.extend(run.info.run_id for run in page)
        token = page.token
        if not token:
            return ids
