"""Four worker processes on one study in a real PostgreSQL, logging to one MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow


def test_four_workers_share_one_study_through_postgresql(tmp_path: Path, postgres, mlflow_server):
    study_file = tmp_path / "shared.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "shared", "task": "logreg_breast_cancer", "budget": {"epochs": 2},
        "optimizers": ["sgd", "adam", "newton_cg", "lbfgs"], "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "none"}, "n_trials": 24, "report": False, "curvature_diagnostics": False,
    }))  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    workers = [
        subprocess.Popen([sys.executable, "-m", "hpo2.cli", "worker", str(study_file), "--storage", postgres["optuna"],
                          "--tracking-uri", mlflow_server, "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(outputs)

    study = optuna.load_study(study_name="shared", storage=postgres["optuna"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(study.trials) == 24 and len(finished) == 24
    assert sorted(t.number for t in study.trials) == list(range(24))
    assert all(t.state == TrialState.COMPLETE for t in finished)

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
    trial_runs = {int(r.data.tags["hpo2.trial_number"]): r for r in runs if "hpo2.trial_number" in r.data.tags}
    assert sorted(trial_runs) == list(range(24))
    assert all(r.info.status == "FINISHED" for r in trial_runs.values())
    best_mlflow = max(trial_runs.values(), key=lambda r: r.data.metrics["valid_metric"])
    assert best_mlflow.data.metrics["valid_metric"] == study.best_value
    assert study.trials[int(best_mlflow.data.tags["hpo2.trial_number"])].value == study.best_value


def test_journal_file_storage_shares_a_study_between_processes_on_one_machine(tmp_path: Path):
    study_file = tmp_path / "j.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "j", "task": "logreg_breast_cancer", "budget": {"epochs": 1}, "optimizers": ["sgd", "adam"],
        "n_trials": 8, "report": False, "curvature_diagnostics": False, "storage": f"journal:{tmp_path / 'j.journal'}",
    }))  # fmt: skip
    workers = [subprocess.Popen([sys.executable, "-m", "hpo2.cli", "worker", str(study_file), "--device", "cpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(outputs)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))
    assert sorted(t.number for t in study.trials) == list(range(8))
    assert all(t.state.is_finished() for t in study.trials)
