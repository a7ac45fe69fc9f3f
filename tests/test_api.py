"""``hpo2.run_study`` from Python: the CLI's semantics (storage, resume, MLflow, export)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

import hpo2
from hpo2.errors import SettingsError


def build(hidden: int = 4, seed: int = 0) -> hpo2.Task:
    """y = x1 - 2 x2, from Python (no task file)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 2, generator=g)
    y = (x[:, :1] - 2 * x[:, 1:])
    model = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return hpo2.Task(name="line", model=model, loss_fn=nn.MSELoss(), train=hpo2.Split(x[:60], y[:60]),
                     valid=hpo2.Split(x[60:], y[60:]), test=None, batch_size=20, metric="loss", metric_fn=None,
                     higher_is_better=False, target=0.1)


def _study_file(folder: Path) -> Path:
    path = folder / "api.yaml"
    path.write_text(yaml.safe_dump({
        "name": "api", "n_trials": 2, "task": {"settings": {"hidden": 3}},
        "optimizers": ["adam", "lbfgs"], "budget": {"epochs": 2}, "report": False, "confirm": False,
        "curvature_diagnostics": False,
        "device": "cpu",
    }))
    return path


def test_run_study_with_a_function_runs_resumes_and_exports(tmp_path: Path) -> None:
    path = _study_file(tmp_path)
    first = hpo2.run_study(path, task=build)
    assert first.config.task.entrypoint == "tests.test_api:build"
    assert first.study.direction.name == "MINIMIZE"  # the function's task says lower is better
    assert len(first.study.trials) == 2
    # the file's settings reach the function
    assert first.best is not None and first.best["task"] == {"entrypoint": "tests.test_api:build",
                                                             "settings": {"hidden": 3}}
    assert first.best["optimizer"]["name"] in ("adam", "lbfgs")
    assert first.best["study"]["values"] == [first.study.best_value]
    # resume: the count continues to the new total, the same storage
    again = hpo2.run_study(path, task=build, n_trials=3)
    assert len(again.study.trials) == 3 and (tmp_path / "api.optuna.db").is_file()
    # nothing to do at the same total: no new trial
    assert len(hpo2.run_study(path, task=build, n_trials=3).study.trials) == 3
    # MLflow: one parent run, a nested run per trial, the task logged by its entrypoint
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("api")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.params["task"] == "tests.test_api:build"
    assert len(runs) - 1 == 3
    # the best config trains in the user's own loop
    task = build(hidden=3)
    optimizer = hpo2.optim.from_config(again.best["optimizer"], task.model.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)


def test_a_function_that_cannot_be_imported_back_runs_from_the_object(tmp_path: Path) -> None:
    """A notebook's function: the runner calls the object; the study records its name."""
    calls = []

    def notebook_task(hidden: int = 4, seed: int = 0) -> hpo2.Task:
        calls.append(hidden)
        return build(hidden, seed)

    result = hpo2.run_study(_study_file(tmp_path), task=notebook_task, n_trials=1)
    assert result.config.task.entrypoint == "tests.test_api:notebook_task"
    complete = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 1 and calls and set(calls) == {3}


def test_run_study_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "task": "digits_mlp", "n_trials": 0}))
    with pytest.raises(SettingsError, match=r"bad.yaml: n_trials = 0: Input should be greater than or equal to 1"):
        hpo2.run_study(path)
