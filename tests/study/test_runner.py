"""Studies end to end: real sqlite storage, real MLflow, the CLI."""

from __future__ import annotations

import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo2.study.config import load_study_config
from hpo2.study.runner import StudyRunner
from tests.study.helpers import run_cli, write_study

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_cli_study_run_tracks_parent_and_nested_runs_and_resumes(tmp_path):
    path = write_study(tmp_path)
    result = run_cli("study", "run", str(path))
    assert result.exit_code == 0, result.output
    storage = f"sqlite:///{tmp_path / 't.optuna.db'}"
    study = optuna.load_study(study_name="t", storage=storage)
    assert len(study.trials) == 4
    # The paper defaults of each optimizer were the first trials.
    assert [t.params["optimizer"] for t in study.trials[:3]] == ["sgd", "adam", "newton_cg"]
    assert study.trials[2].params["newton_cg.damping"] == 1e-3

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpo2.role") == "study"]
    assert len(parents) == 1 and parents[0].data.params["task"] == "logreg_breast_cancer"
    assert client.list_artifacts(parents[0].info.run_id)[0].path == "study.yaml"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(r.data.tags["hpo2.trial_number"]) for r in nested) == [0, 1, 2, 3]
    newton = next(r for r in nested if r.data.params["optimizer"] == "newton_cg")
    assert newton.data.params["damping"] == "0.001" and newton.data.params["cg_max_iter"] == "50"
    assert newton.info.status in ("FINISHED", "KILLED")
    for key in ("valid_metric", "valid_loss", "train_loss", "wall_seconds", "grad_equivalents",
                "diag.cg_iters", "diag.n_hvp", "diag.damping", "curvature.top_eigenvalue", "curvature.hessian_trace"):
        assert key in newton.data.metrics, key
    assert len(client.get_metric_history(newton.info.run_id, "valid_metric")) == 2
    assert len(client.get_metric_history(newton.info.run_id, "diag.n_hvp")) == 2  # full batch: 1 step per epoch

    # Re-running resumes: finished trials are kept and the count continues.
    again = run_cli("study", "run", str(path), "--n-trials", "6")
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.number for t in study.trials] == list(range(6))
    assert len(client.search_runs([exp.experiment_id], filter_string="tags.`hpo2.role` = 'study'")) == 1


def test_a_trial_that_raises_or_diverges_fails_alone(tmp_path):
    path = write_study(
        tmp_path,
        task="quadratic_deep",
        budget={"epochs": 1},
        optimizers=[{"name": "sgd", "fixed": {"lr": 5.0, "momentum": 0.0}},  # diverges
                    {"name": "sophia", "fixed": {"estimator": "gnb"}},     # raises: no GNB for this loss
                    "adam"],
        n_trials=3,
        curvature_diagnostics=False,
    )
    result = run_cli("study", "run", str(path))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}")
    by_opt = {t.params["optimizer"]: t for t in study.trials}
    assert by_opt["sgd"].state == TrialState.PRUNED and by_opt["sgd"].user_attrs["hpo2.status"] == "diverged"
    assert (
        by_opt["sophia"].state == TrialState.FAIL
        and "Gauss-Newton-Bartlett" in by_opt["sophia"].user_attrs["hpo2.reason"]
    )
    assert by_opt["adam"].state == TrialState.COMPLETE
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    statuses = {r.data.params["optimizer"]: r.info.status for r in runs if "hpo2.trial_number" in r.data.tags}
    assert statuses == {"sgd": "KILLED", "sophia": "FAILED", "adam": "FINISHED"}


# The test asks a trial by hand, outside Study.optimize, to stand for a worker killed mid-trial; Optuna warns
# that heartbeats are meant for optimize(), which is exactly the misuse being simulated.
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_running_trial_is_failed_and_retried_by_the_next_run(tmp_path):
    path = write_study(tmp_path, n_trials=2, heartbeat_interval=1, optimizers=["adam"], curvature_diagnostics=False)
    config, file = load_study_config(path)
    runner = StudyRunner(config, file).open()
    trial = runner.study.ask({"optimizer": optuna.distributions.CategoricalDistribution(["adam"])})
    runner.study._storage.record_heartbeat(trial._trial_id)  # a worker started it, then was killed
    time.sleep(3)
    StudyRunner(config, file).run()
    trials = optuna.load_study(study_name="t", storage=runner.storage_url).trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == trials[0].number]
    assert retried and retried[0].state.is_finished()


def test_multi_objective_study_has_a_pareto_front(tmp_path):
    path = write_study(tmp_path, objective=["valid_loss", "grad_equivalents"], n_trials=4, curvature_diagnostics=False)
    result = run_cli("study", "run", str(path))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}")
    assert len(study.directions) == 2 and study.best_trials


def test_pruner_reports_follow_a_geometric_schedule_while_mlflow_gets_every_epoch(tmp_path):
    """A one-step epoch (full-batch logistic regression) under a long budget must not
    make a storage round trip per epoch: the pruner sees the checkpoints only."""
    from hpo2.study.checkpoints import on_checkpoint

    assert [i for i in range(40) if on_checkpoint(i)] == [*range(11), 13, 17, 22, 28, 35]
    path = write_study(tmp_path, budget={"epochs": 300}, optimizers=["sgd"], n_trials=2, enqueue_defaults=False,
                       curvature_diagnostics=False, pruner={"name": "median", "n_startup_trials": 1})
    config, file = load_study_config(path)
    study = StudyRunner(config, file).run()
    trial = study.trials[0]
    assert sorted(trial.intermediate_values) == [i for i in range(300) if on_checkpoint(i)]
    assert len(trial.intermediate_values) < 30
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = trial.user_attrs["hpo2.mlflow_run_id"]
    assert len(client.get_metric_history(run_id, "valid_metric")) == 300
