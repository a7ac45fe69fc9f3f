"""StudyRunner's construction does no I/O; open() does it, once; the runner calls the
report it is given and tells its observer what happens."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.errors import DataMissingError, SettingsError
from hpo2.interface.cli import app
from hpo2.study.config import StudyConfig, load_study_config
from hpo2.study.observer import StudyObserver
from hpo2.study.runner import StudyRunner

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(folder: Path, **fields: object) -> tuple[StudyConfig, Path]:
    data = {"name": "r", "task": "logreg_breast_cancer", "budget": {"epochs": 1}, "optimizers": ["sgd"],
            "n_trials": 2, "report": False, "confirm": False,
            "curvature_diagnostics": False, "enqueue_defaults": False, **fields}
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study_config(path)


def test_constructing_a_runner_touches_no_store(tmp_path: Path) -> None:
    config, file = _study(tmp_path, storage=f"sqlite:///{tmp_path / 'missing' / 'r.db'}",
                          tracking_uri="http://127.0.0.1:9/")  # fmt: skip
    runner = StudyRunner(config, file)  # neither store is usable: nothing is checked or created yet
    assert runner.directions == ["maximize"]  # from the task registry, no data built
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
    with pytest.raises(RuntimeError, match=r"open\(\) has not run"):
        runner.study  # noqa: B018
    with pytest.raises(SettingsError, match="storage: cannot write the sqlite database"):
        runner.open()


def test_open_checks_the_task_data_before_writing(tmp_path: Path) -> None:
    config, file = _study(tmp_path, task={"name": "fmnist_mlp", "settings": {"data_dir": str(tmp_path / "none")}})
    with pytest.raises(DataMissingError, match="dataset-fashion-mnist"):
        StudyRunner(config, file).open()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


class Recorder(StudyObserver):
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def study_opened(self, study: optuna.Study) -> None:
        self.events.append(("opened", study.study_name))

    def trial_started(self, number: int, optimizer: str) -> None:
        self.events.append(("started", number, optimizer))

    def trial_tracked(self, tracking_seconds: float, trial_seconds: float) -> None:
        assert 0 < tracking_seconds < trial_seconds
        self.events.append(("tracked",))

    def trial_stored(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.events.append(("stored", trial.number, trial.state.name))


def test_the_runner_reports_to_its_observer_and_calls_the_report_it_was_given(tmp_path: Path) -> None:
    config, file = _study(tmp_path)
    reports: list[tuple[str, int, str]] = []
    recorder = Recorder()
    runner = StudyRunner(config, file, recorder,
                         report=lambda study, cfg, uri, run_id: reports.append((cfg.name, len(study.trials), run_id)))
    assert runner.open() is runner.open()  # a second open does nothing
    runner.run()
    assert recorder.events == [("opened", "r"), ("started", 0, "sgd"), ("tracked",), ("stored", 0, "COMPLETE"),
                               ("started", 1, "sgd"), ("tracked",), ("stored", 1, "COMPLETE")]  # fmt: skip
    assert reports == [("r", 2, runner.parent.run_id)]


def test_a_resume_with_a_changed_sampler_is_refused_in_one_line_and_leaves_no_run_running(tmp_path: Path) -> None:
    """MLflow keeps a run's params fixed: an edited study used to leave its parent run RUNNING
    and a spool file that `study sync` could never send; now it is refused before anything runs."""
    StudyRunner(*_study(tmp_path, sampler={"name": "random"}, n_trials=1)).run()
    _, file = _study(tmp_path, sampler={"name": "tpe"}, n_trials=2)
    result = CliRunner().invoke(app, ["study", "run", str(file)])
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (
        "error: study 'r' was run with other settings than its file now gives (sampler 'random' -> 'tpe'): "
        "revert them to resume it, or give the study a new name to start a new one with them "
        "(or `hpo2 study delete r` first); nothing was run")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("r").experiment_id])
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}  # the parent and its one trial
    assert len(optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r.optuna.db'}").trials) == 1
    assert not (tmp_path / "mlflow-unsent").exists()
