"""A tracking server that is down at the start, or lost in the middle of a study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.interface.progress import Progress
from hpo2.study.config import load_study_config
from hpo2.study.results import mlflow_run_id
from hpo2.study.runner import StudyRunner
from tests.reliability.conftest import free_port, wait_http

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow


def _study(tmp_path: Path, tracking_uri: str, n_trials: int = 4) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "task": "logreg_breast_cancer", "budget": {"epochs": 2}, "optimizers": ["adam", "sgd"],
        "n_trials": n_trials, "pruner": {"name": "none"}, "report": False, "confirm": False,
        "tracking_uri": tracking_uri,
    }))  # fmt: skip
    return path


def test_unreachable_tracking_server_at_start_is_a_clear_error_before_anything_runs(tmp_path):
    path = _study(tmp_path, f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "does not answer" in text and "nothing was run" in text and "Traceback" not in result.output
    assert not (tmp_path / "s.optuna.db").exists()


class MlflowServer:
    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'm.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_http(self.url + "/health")

    def stop(self) -> None:
        """Kill the server and its workers (its whole process group): the server is lost."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None


def test_a_study_on_a_tracking_server_prints_no_mlflow_view_run_lines(tmp_path):
    """MLflow writes "View run ... at" and "View experiment at" to stdout for each run it
    closes over HTTP: `hpo2 study run` shows its own lines only."""
    server = MlflowServer(tmp_path)
    server.start()
    try:
        result = CliRunner().invoke(app, ["study", "run", str(_study(tmp_path, server.url, n_trials=1))])
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert "trial   0" in result.output  # the study ran and its runs were closed over HTTP
    assert "View run" not in result.output and "View experiment" not in result.output, result.output


@pytest.mark.parametrize("comes_back", [True, False])
def test_lost_tracking_server_mid_study_buffers_retries_and_tells_the_user(tmp_path, comes_back):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        config, file = load_study_config(_study(tmp_path, server.url))
        progress = Progress()
        runner = StudyRunner(config, file, progress)
        events = {"stopped": False, "restarted": False}

        def outage(progress) -> None:
            if progress.current_trial == 1 and not events["stopped"]:
                events["stopped"] = True
                server.stop()
            if comes_back and progress.current_trial == 3 and not events["restarted"]:
                events["restarted"] = True
                server.start()

        progress.listeners.append(outage)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            study = runner.run()
        messages = " ".join(str(w.message) for w in caught)
        assert "unreachable" in messages  # the user is told
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4  # trials went on

        if comes_back:
            client = MlflowClient(server.url)
            runs = client.search_runs([client.get_experiment_by_name("s").experiment_id])
            by_trial = {int(r.data.tags["hpo2.trial_number"]): r for r in runs if "hpo2.trial_number" in r.data.tags}
            assert sorted(by_trial) == [0, 1, 2, 3]
            assert all(r.info.status == "FINISHED" for r in by_trial.values())
            during = by_trial[1]  # ran while the server was down: sent on retry
            assert len(client.get_metric_history(during.info.run_id, "valid_metric")) == 2
            assert not (tmp_path / "mlflow-unsent").exists()
            # runs created late are linked to their trials all the same (the report reads the link)
            assert all(mlflow_run_id(study, t) == by_trial[t.number].info.run_id for t in study.trials)
        else:
            spooled = sorted((tmp_path / "mlflow-unsent").glob("*.json"))
            assert len(spooled) >= 3  # trials 1-3 and the study's parent run, nothing lost
            assert "unsent" not in messages or "saved in" in messages
            assert "saved in" in messages
    finally:
        server.stop()


def test_server_back_mid_trial_links_the_late_run_to_its_trial_while_it_runs(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        path = _study(tmp_path, server.url, n_trials=1)
        path.write_text(path.read_text().replace("epochs: 2", "epochs: 4"))
        config, file = load_study_config(path)
        progress = Progress()
        runner = StudyRunner(config, file, progress)
        seen: dict[str, object] = {}

        def back(progress) -> None:
            if progress.current_trial == 0 and "stopped" not in seen:
                seen["stopped"] = True
                server.stop()  # the trial starts with no server: its run cannot be created yet
            if progress.current_epoch >= 1 and "restarted" not in seen:
                seen["restarted"] = True
                server.start()

        progress.listeners.append(back)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = runner.run()
        # linked on the trial itself, which Optuna allows only while it runs (not on the study, the late path)
        run_id = study.trials[0].user_attrs.get("hpo2.mlflow_run_id")
        assert run_id is not None and "hpo2.mlflow_run_id.0" not in study.user_attrs
        run = MlflowClient(server.url).get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["hpo2.trial_number"] == "0"
    finally:
        server.stop()


def test_two_studies_spool_into_one_folder_and_sync_makes_mlflow_agree_with_optuna(tmp_path):
    server = MlflowServer(tmp_path)
    studies = {}
    for name in ("a", "b"):  # same optimizers, so the same run names: their spool files must not collide
        server.start()
        path = _study(tmp_path, server.url, n_trials=2)
        path = path.rename(tmp_path / f"{name}.yaml")
        path.write_text(path.read_text().replace("name: s", f"name: {name}"))
        config, file = load_study_config(path)
        progress = Progress()
        progress.listeners.append(lambda p: server.stop() if p.current_trial == 1 else None)
        runner = StudyRunner(config, file, progress)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            studies[name] = (path, runner.run())
    spooled = sorted((tmp_path / "mlflow-unsent").glob("*.json"))
    assert len(spooled) == 4  # per study: trial 1's run (never created) and the parent run's end

    server.start()
    try:
        for _name, (path, _) in studies.items():
            result = CliRunner().invoke(app, ["study", "sync", str(path)])
            assert result.exit_code == 0 and "sent 2 run(s)" in result.output, result.output
        assert not list((tmp_path / "mlflow-unsent").glob("*"))
        client = MlflowClient(server.url)
        for name, (_path, study) in studies.items():
            study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / f'{name}.optuna.db'}")
            runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
            assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 3  # parent + 2 trials
            for trial in study.trials:
                run = client.get_run(mlflow_run_id(study, trial))
                assert run.data.tags["hpo2.study"] == name and run.data.tags["hpo2.trial_number"] == str(trial.number)
                assert len(client.get_metric_history(run.info.run_id, "valid_metric")) == 2
        again = CliRunner().invoke(app, ["study", "sync", str(studies["a"][0])])
        assert again.exit_code == 0 and "sent 0 run(s)" in again.output  # nothing sent twice
    finally:
        server.stop()
