"""StudyRunner's construction does no I/O; open() does it, once; the runner calls the
report it is given and tells its observer what happens."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from hpo2.errors import DataMissingError, SettingsError
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
