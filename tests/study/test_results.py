"""Reading a study back (hpo2.study.results): the exported best config retrains to the best metric; status
counts trials and the best per optimizer."""

from __future__ import annotations

import optuna
import pytest
import yaml

from tests.study.helpers import run_cli, write_study

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow


def test_best_export_then_train_reproduces_the_best_validation_metric(tmp_path):
    path = write_study(tmp_path, n_trials=3)
    assert run_cli("study", "run", str(path)).exit_code == 0
    best_file = tmp_path / "best.yaml"
    result = run_cli("study", "best", str(path), "--export", str(best_file))
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(best_file.read_text())
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}")
    assert exported["optimizer"]["name"] == study.best_trial.params["optimizer"]
    from hpo2.train import train_from_config
    from hpo2.train.config import load_train_config

    _, rerun = train_from_config(load_train_config(best_file))
    assert rerun.final.valid_metric == pytest.approx(study.best_value, abs=1e-6)
    import torch

    from hpo2.optim import from_config

    assert from_config(best_file, [torch.nn.Parameter(torch.zeros(2))]) is not None


def test_status_reports_counts_and_best_per_optimizer(tmp_path):
    path = write_study(tmp_path, n_trials=3)
    assert run_cli("study", "run", str(path)).exit_code == 0
    result = run_cli("study", "status", str(path))
    assert result.exit_code == 0, result.output
    assert "best per optimizer" in result.output and "newton_cg" in result.output
