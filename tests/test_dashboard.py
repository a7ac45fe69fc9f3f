"""``hpo2 dashboard``: the right store, the runs-table link, one worker, and no server left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.cli import app
from hpo2.dashboard import tracking_store
from hpo2.errors import SettingsError

REPO = Path(__file__).resolve().parent.parent


def _like_a_background_job() -> None:
    """Start with SIGINT ignored, as a non-interactive shell starts ``cmd &`` (a CI step)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder whose ``studies/mlflow.db`` holds one experiment; no HPO2_STUDIES."""
    monkeypatch.delenv("HPO2_STUDIES", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "studies").mkdir()
    (tmp_path / "src" / "deep").mkdir(parents=True)
    MlflowClient(f"sqlite:///{tmp_path / 'studies' / 'mlflow.db'}").create_experiment("quickstart")
    return tmp_path


def test_the_store_is_found_upward_from_a_sub_folder(project: Path) -> None:
    expected = f"sqlite:///{project / 'studies' / 'mlflow.db'}"
    assert tracking_store(cwd=project / "src" / "deep") == expected
    assert tracking_store(cwd=project / "studies") == expected
    assert tracking_store("sqlite:///elsewhere.db", cwd=project) == "sqlite:///elsewhere.db"


def test_the_store_of_a_named_study_is_served(project: Path) -> None:
    other = project / "other"
    other.mkdir()
    (other / "s.yaml").write_text("name: s\ntask: digits_mlp\nn_trials: 2\n")
    with pytest.raises(SettingsError, match="does not exist yet"):
        tracking_store(study=str(other / "s.yaml"), cwd=project)
    MlflowClient(f"sqlite:///{other / 'mlflow.db'}").search_experiments()
    assert tracking_store(study=str(other / "s.yaml"), cwd=project) == f"sqlite:///{other / 'mlflow.db'}"


def test_dashboard_outside_a_project_refuses_instead_of_serving_an_empty_store(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HPO2_STUDIES", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["dashboard", "--port", str(_free_port())])
    assert result.exit_code == 2, result.output
    assert "no MLflow store to serve" in result.output and "--tracking-uri" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no empty ./mlflow.db


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow  # a whole study or a server
def test_dashboard_serves_the_mlflow_ui_and_rest_api(project: Path, sig: signal.Signals) -> None:
    """From a sub-folder of the project: the UI and REST API answer, the printed link is
    the runs table, one uvicorn worker and no job runners; a signal to ``hpo2 dashboard``
    stops every process it started and the port is free afterwards, also when the dashboard
    was started with SIGINT ignored (a background job of a script, a CI step)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hpo2.cli", "dashboard", "--port", str(port)],
                            cwd=project / "src" / "deep", env=env, start_new_session=True,
                            preexec_fn=_like_a_background_job,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    started: list[int] = []
    try:
        deadline, page = time.time() + 90, None
        while time.time() < deadline and page is None and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None and "<html" in page.lower()
        api = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", timeout=5
        ).read()
        assert b"quickstart" in api  # the project's store, not an empty ./mlflow.db
        started = _descendants(proc.pid)
        assert 1 <= len(started) <= 2, f"expected the mlflow CLI and one uvicorn worker, found {len(started)} processes"
        proc.send_signal(sig)
        output = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 0, output
        assert not [pid for pid in started if _alive(pid)], "a server process outlived hpo2 dashboard"
        assert not _listening(port)
        experiment = MlflowClient(f"sqlite:///{project / 'studies' / 'mlflow.db'}").get_experiment_by_name("quickstart")
        assert f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs" in output
        assert not (project / "src" / "deep" / "mlflow.db").exists()
    finally:
        for pid in [proc.pid, *started]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait(timeout=10)
