"""Security: a data folder cannot run code (CIFAR batches are unpickled with an
allow-list), and a storage password never reaches the screen, MLflow, the report
or the exported config."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.errors import UntrustedFileError
from hpo2.interface.cli import app
from hpo2.tasks import build_task
from hpo2.tasks.files import read_cifar10
from tests.reliability.conftest import free_port, wait_http


class _RunsCode:
    """Unpickling this calls ``os.system``: what a hostile 'batch' would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return os.system, (f"touch {self.marker}",)


def _write_batches(folder: Path, protocol: int, hostile: object | None = None) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"training batch", b"labels": rng.integers(0, 10, 20).tolist(),
                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * 20}
        if hostile is not None and name == "data_batch_3":
            batch[b"labels"] = hostile
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_official_cifar_batches_still_load(tmp_path, protocol):
    _write_batches(tmp_path, protocol)
    x_train, y_train, x_test, y_test = read_cifar10(tmp_path)
    assert x_train.shape == (100, 3, 32, 32) and x_train.dtype == np.uint8 and y_test.shape == (20,)


def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    _write_batches(tmp_path / "data", 2, hostile=_RunsCode(marker))
    with pytest.raises(UntrustedFileError, match=r"data_batch_3: refused to load posix\.system"):
        build_task("cifar10_3c3d", {"data_dir": str(tmp_path / "data")})
    assert not marker.exists()
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": {"name": "cifar10_3c3d", "settings": {"data_dir": str(tmp_path / "data")}},
                "optimizer": {"name": "sgd"},
                "device": "cpu",
            }
        )
    )
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "data_batch_3: refused to load" in " ".join(result.output.split())
    assert not marker.exists()


PASSWORD = "Pa55-w0rd-hunter2"  # trust auth accepts any password: what matters is where it ends up


def _run_in_subprocess(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.run(
        [sys.executable, "-m", "hpo2", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    return process.stdout + process.stderr


#: a URL's password in its user part and as a query parameter (libpq and SQLAlchemy take both), masked as shown
PASSWORD_FORMS = {
    "user part": ("postgresql+psycopg2://hpo2:{password}@127.0.0.1:{port}/{db}", "hpo2:***@"),
    "query": ("postgresql+psycopg2://hpo2@127.0.0.1:{port}/{db}?password={password}", "?password=***"),
}


def _url(form: str, port: str, db: str) -> str:
    return PASSWORD_FORMS[form][0].format(password=PASSWORD, port=port, db=db)


def _every_command_line() -> str:
    """The arguments of every process on this machine (what ``ps`` shows every local user)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            continue
    return "\n".join(lines)


@pytest.mark.parametrize("form", ["user part", pytest.param("query", marks=pytest.mark.slow)])  # one form in the loop
def test_a_storage_password_reaches_no_output_mlflow_record_report_or_export(
    tmp_path, postgres, monkeypatch, capfd, form
):
    """The password of the Optuna storage and of the MLflow store (both PostgreSQL
    URLs in the study file, the password in either form) is in none of: stdout/stderr
    of run, list, status, best, report and of a failing connection; MLflow params,
    tags and artifacts; the HTML report; the exported config; any other file the study wrote."""
    port = postgres["port"]
    storage, tracking = _url(form, port, "optuna"), _url(form, port, "mlflow")
    masked = PASSWORD_FORMS[form][1]
    study_file = tmp_path / "secret.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": f"secret-{tmp_path.name[-8:]}",
        "task": {"name": "digits_mlp", "settings": {"n_train": 200, "n_valid": 100}},
        "optimizers": ["sgd"], "n_trials": 1, "budget": {"steps": 3}, "report": False, "confirm": False,
        "curvature_diagnostics": False,
        "storage": storage, "tracking_uri": tracking, "device": "cpu",
    }))  # fmt: skip
    name = yaml.safe_load(study_file.read_text())["name"]
    # The run in its own process (all its logging and warnings seen); the rest in-process, for speed.
    outputs = [_run_in_subprocess("study", "run", str(study_file), cwd=tmp_path)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPO2_STUDIES", str(tmp_path))
    for args, code in [(["list"], 0), (["status", str(study_file)], 0),
                       (["best", str(study_file), "--export", "best.yaml"], 0),
                       (["report", str(study_file), "--out", "report.html", "--no-png"], 0),
                       (["status", str(study_file), "--storage", storage.replace(f":{port}/", ":1/")], 2)]:  # fmt: skip
        result = CliRunner().invoke(app, ["study", *args])
        assert result.exit_code == code, result.output
        outputs.append(result.output)
    outputs.append("".join(capfd.readouterr()))
    assert masked in outputs[0] and "***" in outputs[1]  # shown masked by run and list (a folded table cell)
    assert f"cannot open {_url(form, '1', 'optuna').replace(PASSWORD, '***')!r}" in " ".join(outputs[-2].split())
    for output in outputs:
        assert PASSWORD not in output

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2  # the study's parent run and its trial
    downloaded = tmp_path / "downloaded"
    for run in runs:
        assert PASSWORD not in repr(run.data.params) + repr(run.data.tags)
        client.download_artifacts(run.info.run_id, "", str(downloaded / run.info.run_id))
    logged = [p for p in downloaded.rglob("*") if p.is_file()]
    assert any(p.name == "secret.yaml" for p in logged) and any(p.name == "report.html" for p in logged)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != study_file]
    assert {"best.yaml", "report.html"} <= {p.name for p in written}
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.slow  # a server
@pytest.mark.parametrize("form", PASSWORD_FORMS)
def test_hpo2_dashboard_serves_a_store_whose_password_is_on_no_command_line(tmp_path, postgres, form):
    """``hpo2 dashboard --study NAME`` over a PostgreSQL MLflow store with a password: the
    server serves that store, and the password is in the arguments of no process on this
    machine (``ps`` shows them to every user) and in none of the dashboard's output."""
    tracking = _url(form, postgres["port"], "mlflow")
    experiment = f"dash-{tmp_path.name[-8:]}"
    MlflowClient(tracking).create_experiment(experiment)
    study_file = tmp_path / "dash.yaml"
    study_file.write_text(yaml.safe_dump({"name": "dash", "task": "digits_mlp", "tracking_uri": tracking}))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "hpo2", "dashboard", "--study", str(study_file),
                             "--port", str(port)], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", seconds=120)
        served = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1000", timeout=10
        ).read()
        assert experiment.encode() in served  # the store of the study, given through the environment
        assert PASSWORD not in _every_command_line()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == 0, output
    assert PASSWORD not in output and PASSWORD_FORMS[form][1] in output
