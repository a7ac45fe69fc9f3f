"""Security: a data folder cannot run code (CIFAR batches are unpickled with an
allow-list), and a storage password never reaches the screen, MLflow, the report
or the exported config."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from hpo2.cli import app
from hpo2.errors import UntrustedFileError
from hpo2.tasks import build_task
from hpo2.tasks.files import read_cifar10


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
        [sys.executable, "-m", "hpo2.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    return process.stdout + process.stderr


def test_a_storage_password_reaches_no_output_mlflow_record_report_or_export(tmp_path, postgres, monkeypatch, capfd):
    """The password of the Optuna storage and of the MLflow store (both PostgreSQL
    URLs in the study file) is in none of: stdout/stderr of run, status, best,
    report and of a failing connection; MLflow params, tags and artifacts; the
    HTML report; the exported config; any other file the study wrote."""
    port = postgres["port"]
    storage = f"postgresql+psycopg2://hpo2:{PASSWORD}@127.0.0.1:{port}/optuna"
    tracking = f"postgresql+psycopg2://hpo2:{PASSWORD}@127.0.0.1:{port}/mlflow"
    study_file = tmp_path / "secret.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": f"secret-{tmp_path.name[-8:]}",
        "task": {"name": "digits_mlp", "settings": {"n_train": 200, "n_valid": 100}},
        "optimizers": ["sgd"], "n_trials": 1, "budget": {"steps": 3}, "report": False, "curvature_diagnostics": False,
        "storage": storage, "tracking_uri": tracking, "device": "cpu",
    }))  # fmt: skip
    name = yaml.safe_load(study_file.read_text())["name"]
    # The run in its own process (all its logging and warnings seen); the rest in-process, for speed.
    outputs = [_run_in_subprocess("study", "run", str(study_file), cwd=tmp_path)]
    monkeypatch.chdir(tmp_path)
    for args, code in [(["status", str(study_file)], 0), (["best", str(study_file), "--export", "best.yaml"], 0),
                       (["report", str(study_file), "--out", "report.html", "--no-png"], 0),
                       (["status", str(study_file), "--storage", storage.replace(f":{port}/", ":1/")], 2)]:  # fmt: skip
        result = CliRunner().invoke(app, ["study", *args])
        assert result.exit_code == code, result.output
        outputs.append(result.output)
    outputs.append("".join(capfd.readouterr()))
    assert "hpo2:***@" in outputs[0] and "cannot open 'postgresql+psycopg2://hpo2:***@" in outputs[-2]  # shown, masked
    for output in outputs:
        assert PASSWORD not in output

    from mlflow.tracking import MlflowClient

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
