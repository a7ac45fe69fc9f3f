"""Studies as a user finds and manages them: names found from any folder of the
project, exports beside the study, ``study list`` and ``study delete``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.errors import SettingsError
from hpo2.interface.cli import app
from hpo2.study.config import load_study_config
from hpo2.study.locate import find_study_file
from hpo2.study.runner import StudyRunner


def _study_file(folder: Path, name: str, **fields) -> Path:
    data = {"name": name, "task": "logreg_breast_cancer", "budget": {"epochs": 2}, "optimizers": ["sgd", "adam"],
            "n_trials": 2, "report": False, "confirm": False, "curvature_diagnostics": False, **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``<tmp>/studies/a-study.yaml`` (study ``a``, run), the user standing in ``<tmp>/src/deep``."""
    monkeypatch.delenv("HPO2_STUDIES", raising=False)
    StudyRunner(*load_study_config(_study_file(tmp_path / "studies", "a"))).run()
    (tmp_path / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "src" / "deep")
    return tmp_path


def _cli(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), input=input)


def test_a_study_name_is_found_from_any_folder_of_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO2_STUDIES", raising=False)
    file = _study_file(tmp_path / "studies", "q")
    (tmp_path / "src" / "deep").mkdir(parents=True)
    for cwd in (tmp_path, tmp_path / "studies", tmp_path / "src" / "deep"):
        assert find_study_file("q", cwd).resolve() == file.resolve()
    elsewhere = tmp_path / "elsewhere"
    _study_file(elsewhere, "r")
    monkeypatch.setenv("HPO2_STUDIES", str(elsewhere))
    assert find_study_file("r", tmp_path / "src").resolve() == (elsewhere / "r-study.yaml").resolve()
    with pytest.raises(SettingsError, match=f"looked in {elsewhere}"):
        find_study_file("q", tmp_path)
    monkeypatch.delenv("HPO2_STUDIES")
    with pytest.raises(SettingsError) as error:
        find_study_file("nope", tmp_path / "src" / "deep")
    message = str(error.value)
    assert f"{tmp_path / 'src' / 'deep'}, {tmp_path / 'studies'}" in message and "HPO2_STUDIES" in message


def test_best_and_report_are_written_beside_the_study_not_in_the_current_folder(project: Path) -> None:
    best = _cli("study", "best", "a")
    assert best.exit_code == 0, best.output
    export = project / "studies" / "a.best.yaml"
    assert yaml.safe_load(export.read_text())["study"]["name"] == "a"
    assert f"hpo2 train --config {export}" in best.output.replace("\n", "")
    report = _cli("study", "report", "a", "--no-png")
    assert report.exit_code == 0, report.output
    assert "rendering the plots of 2 trials" in report.output  # says what it does before the long part
    html_report = project / "studies" / "a.report.html"
    assert html_report.is_file() and f"wrote {html_report}" in report.output.replace("\n", "")
    assert list((project / "src" / "deep").iterdir()) == []


def test_study_list_shows_every_study_with_its_progress(project: Path) -> None:
    _study_file(project / "studies", "never", n_trials=5)
    (project / "studies" / "train.yaml").write_text("task: digits_mlp\noptimizer: sgd\n")  # a train config: not a study
    result = CliRunner().invoke(app, ["study", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}  # fmt: skip
    assert set(rows) == {"a", "never"}, result.output
    best_a = optuna.load_study(study_name="a", storage=f"sqlite:///{project / 'studies' / 'a.optuna.db'}").best_trial
    assert rows["a"][:3] == ["logreg_breast_cancer", "2/2", f"{best_a.value:.5g} ({best_a.params['optimizer']})"]
    assert rows["never"][1:4] == ["not run", "-", "never.optuna.db"]
    assert not (project / "studies" / "never.optuna.db").exists()  # listing created nothing


def test_study_delete_asks_then_removes_that_study_only(project: Path) -> None:
    studies = project / "studies"
    StudyRunner(*load_study_config(_study_file(studies, "b"))).run()  # another study in the same MLflow store
    client = MlflowClient(f"sqlite:///{studies / 'mlflow.db'}")

    def runs(study: str) -> list:
        experiment = client.get_experiment_by_name(study)
        return client.search_runs([experiment.experiment_id], f"tags.`hpo2.study` = '{study}'", ViewType.ACTIVE_ONLY)

    assert len(runs("a")) == 3  # the parent and two trials
    declined = _cli("study", "delete", "a", input="n\n")
    assert declined.exit_code == 1 and "3 MLflow runs" in declined.output and "nothing deleted" in declined.output
    assert len(runs("a")) == 3
    deleted = _cli("study", "delete", "a", "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert "a" not in optuna.get_all_study_names(f"sqlite:///{studies / 'a.optuna.db'}")
    assert client.get_experiment_by_name("a") is None
    trash = client.search_experiments(ViewType.DELETED_ONLY)
    assert [e.name.startswith("a (deleted ") for e in trash] == [True]
    assert client.search_runs([trash[0].experiment_id], "", ViewType.ACTIVE_ONLY) == []
    assert len(runs("b")) == 3 and optuna.get_all_study_names(f"sqlite:///{studies / 'b.optuna.db'}") == ["b"]
    assert (studies / "a-study.yaml").is_file()
    assert _cli("study", "delete", "a", "--yes").exit_code == 2  # nothing left to delete
    rerun = _cli("study", "run", "a")  # runs afresh, none of the deleted runs comes back
    assert rerun.exit_code == 0, rerun.output
    assert "nothing to do" not in rerun.output and len(runs("a")) == 3


def test_best_and_status_hint_at_a_best_setting_on_the_edge_of_its_range(tmp_path: Path, monkeypatch) -> None:
    """A best value at (within 1% of, on a log scale for a log range) an end of its search
    range gets one ``hint:`` line in `study best` and `study status`; one inside gets none."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hpo2.study.config import default_storage

    monkeypatch.delenv("HPO2_STUDIES", raising=False)
    path = _study_file(tmp_path, "edge")
    study = optuna.create_study(study_name="edge", storage=default_storage(*load_study_config(path)),
                                direction="maximize")  # fmt: skip
    space = {"optimizer": CategoricalDistribution(["sgd", "adam"]), "sgd.lr": FloatDistribution(1e-4, 10, log=True),
             "sgd.momentum": FloatDistribution(0.0, 0.99), "sgd.steps": IntDistribution(1, 100)}
    study.add_trial(optuna.trial.create_trial(  # the best: lr at the low end (log scale), steps at the high end
        params={"optimizer": "sgd", "sgd.lr": 1.1e-4, "sgd.momentum": 0.5, "sgd.steps": 100},
        distributions=space, value=0.9))
    study.add_trial(optuna.trial.create_trial(
        params={"optimizer": "sgd", "sgd.lr": 1e-2, "sgd.momentum": 0.0, "sgd.steps": 50},
        distributions=space, value=0.5))
    hints = ["hint: sgd lr = 0.00011 is at the low end of its range [0.0001, 10]: widen it "
             "(ranges.lr of sgd in the study file)",
             "hint: sgd steps = 100 is at the high end of its range [1, 100]: widen it "
             "(ranges.steps of sgd in the study file)"]  # fmt: skip
    for command in ("best", "status"):
        result = _cli("study", command, str(path))
        assert result.exit_code == 0, result.output
        lines = [" ".join(line.split()) for line in result.output.splitlines()]
        assert [line for line in lines if line.startswith("hint:")] == hints, result.output


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_study_delete_is_refused_while_a_worker_runs_trials_unless_forced(tmp_path: Path) -> None:
    """Deleting a study under a running worker killed its trial with a traceback and sent its later
    runs into a deleted experiment; a RUNNING trial past its heartbeat (its worker died) is not counted."""
    file = _study_file(tmp_path, "w")
    url = f"sqlite:///{tmp_path / 'w.optuna.db'}"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=30)
    study = optuna.create_study(study_name="w", storage=storage)
    trials = [study.ask(), study.ask()]
    for trial in trials:
        storage.record_heartbeat(trial._trial_id)
    refused = _cli("study", "delete", str(file), "--yes")
    assert refused.exit_code == 2, refused.output
    assert " ".join(refused.output.split()).startswith(
        "error: study 'w' has 2 trials RUNNING: a worker is probably running it")
    assert "--force" in refused.output and "nothing deleted" in refused.output
    with sqlite3.connect(tmp_path / "w.optuna.db") as db:  # trial 0's worker died an hour ago: stale
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour') WHERE trial_id = ?",
                   (trials[0]._trial_id,))
    refused = _cli("study", "delete", str(file), "--yes")
    assert refused.exit_code == 2 and "has 1 trial RUNNING" in " ".join(refused.output.split())
    assert optuna.get_all_study_names(url) == ["w"]
    forced = _cli("study", "delete", str(file), "--yes", "--force")
    assert forced.exit_code == 0, forced.output
    assert optuna.get_all_study_names(url) == []
