"""``hpo2 dashboard``: the right store, a link to each study's ranked trials printed once the
server answers, a quiet terminal, one worker, and no server left behind (not even after SIGKILL)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.errors import SettingsError
from hpo2.interface.cli import app
from hpo2.interface.dashboard import SHARED_VIEW_TAG, runs_url, study_links, tracking_store, wait_until_answering

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
    client = MlflowClient(f"sqlite:///{tmp_path / 'studies' / 'mlflow.db'}")
    client.create_experiment("quickstart")
    return tmp_path


def _study_runs(client: MlflowClient, experiment_id: str, study: str, directions: str | None, trials: int = 1) -> str:
    """A study's parent run as the runner leaves it (its objective, and its directions
    tag unless ``directions`` is None) with ``trials`` trial runs under it; returns its id."""
    tags = {"hpo2.study": study, "hpo2.role": "study", **({"hpo2.directions": directions} if directions else {})}
    parent = client.create_run(experiment_id, run_name=study, tags=tags).info.run_id
    client.log_param(parent, "objective", "valid_loss")
    for number in range(trials):
        client.create_run(experiment_id, run_name=f"trial-{number}-sgd",
                          tags={"mlflow.parentRunId": parent, "hpo2.study": study})  # fmt: skip
    return parent


def test_each_study_gets_a_shared_view_of_its_trials_ranked_by_the_objective(tmp_path: Path) -> None:
    """The view MLflow's UI opens from ``?viewStateShareKey=KEY``: the study's nested runs
    only, sorted on the objective in its direction, with the objective and optimizer as columns."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    plain = client.create_experiment("plain")
    shared = client.create_experiment("shared")
    low = _study_runs(client, shared, "low", "minimize", trials=2)
    high = _study_runs(client, shared, "high", "maximize,minimize")
    old = _study_runs(client, shared, "old", None)  # a parent run from before the directions tag
    links = {link.label: link for link in study_links(client)}
    assert set(links) == {"experiment plain", "study high, its trials best first by valid_loss",
                          "study low, its trials best first by valid_loss", "study old, its trials unsorted"}
    assert links["experiment plain"].experiment_id == plain and links["experiment plain"].view is None
    tags = client.get_experiment(shared).tags
    for study, parent, ascending in (("low", low, True), ("high", high, False)):
        link = links[f"study {study}, its trials best first by valid_loss"]
        assert runs_url("h", 1, link.experiment_id, link.view) == (
            f"http://h:1/#/experiments/{shared}/runs?viewStateShareKey=hpo2-{study}")
        view = json.loads(tags[SHARED_VIEW_TAG + link.view])
        assert view["searchFilter"] == f"tags.mlflow.parentRunId = '{parent}'"
        assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`valid_loss`", ascending)
        assert view["selectedColumns"][0] == "metrics.`valid_loss`"
        assert {"params.`optimizer`", "tags.`hpo2.status`"} <= set(view["selectedColumns"])
        # the filter selects exactly this study's trials
        found = [r.info.run_name for r in client.search_runs([shared], view["searchFilter"])]
        assert sorted(found) == (["trial-0-sgd", "trial-1-sgd"] if study == "low" else ["trial-0-sgd"])
    old_view = json.loads(tags[SHARED_VIEW_TAG + "hpo2-old"])
    assert "orderByKey" not in old_view and old_view["searchFilter"] == f"tags.mlflow.parentRunId = '{old}'"


def test_waiting_for_the_server_ends_when_it_answers_or_exits(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert wait_until_answering(url, server, seconds=30)
    finally:
        server.kill()
        server.wait()
    started = time.monotonic()
    assert not wait_until_answering(url, server, seconds=30)  # exited: no 30 s wait
    assert time.monotonic() - started < 5


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


def _lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    """The lines of ``proc``'s output, as they come (a thread reads them)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.decode())

    threading.Thread(target=read, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str], text: str, seconds: float) -> list[str]:
    """The lines up to the first holding ``text`` (AssertionError after ``seconds``)."""
    seen, deadline = [], time.monotonic() + seconds
    while not (seen and text in seen[-1]):
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no line with {text!r} in {seconds} s: {seen}") from None
    return seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.slow  # a whole study or a server
def test_dashboard_serves_the_mlflow_ui_and_rest_api(project: Path, sig: signal.Signals) -> None:
    """From a sub-folder of the project: the links are printed once the server answers
    (the health check answers the moment they appear), the study's link opens its ranked
    trials, the UI and REST API answer, one uvicorn worker and no job runners, and no line
    per request nor a deprecation warning reaches the terminal.  A signal to ``hpo2 dashboard``
    stops every process it started and the port is free afterwards, also when the dashboard
    was started with SIGINT ignored (a background job of a script, a CI step), and also
    after SIGKILL (the server's parent-death signal)."""
    client = MlflowClient(f"sqlite:///{project / 'studies' / 'mlflow.db'}")
    _study_runs(client, client.create_experiment("ranked"), "ranked", "minimize")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "hpo2", "dashboard", "--port", str(port)],
                            cwd=project / "src" / "deep", env=env, start_new_session=True,
                            preexec_fn=_like_a_background_job,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    started: list[int] = []
    try:
        lines = _lines(proc)
        output = _until(lines, "starting the MLflow UI", 60)
        output += _until(lines, "viewStateShareKey=hpo2-ranked", 180)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()  # printed after it answered
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<html" in page.lower()
        for _ in range(5):  # requests that MLflow's default server would log, one line each
            api = urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", timeout=5
            ).read()
        assert b"quickstart" in api  # the project's store, not an empty ./mlflow.db
        started = _descendants(proc.pid)
        assert 1 <= len(started) <= 2, f"expected the mlflow CLI and one uvicorn worker, found {len(started)} processes"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        if sig == signal.SIGKILL:  # nobody stops the server but its parent-death signal
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and [pid for pid in started if _alive(pid)]:
                time.sleep(0.2)
        else:
            assert proc.returncode == 0
        time.sleep(0.5)  # the reader thread takes the last lines
        while not lines.empty():
            output.append(lines.get())
        text = "".join(output)
        assert not [pid for pid in started if _alive(pid)], "a server process outlived hpo2 dashboard"
        assert not _listening(port)
        ranked = client.get_experiment_by_name("ranked").experiment_id
        quickstart = client.get_experiment_by_name("quickstart").experiment_id
        assert f"http://127.0.0.1:{port}/#/experiments/{quickstart}/runs\n" in text
        assert f"http://127.0.0.1:{port}/#/experiments/{ranked}/runs?viewStateShareKey=hpo2-ranked" in text
        assert '"GET ' not in text and "Warning" not in text and "INFO" not in text, text
        assert not (project / "src" / "deep" / "mlflow.db").exists()
    finally:
        for pid in [proc.pid, *started]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait(timeout=10)
