"""Studies end to end: real sqlite storage, real MLflow, the CLI."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo2.cli import app
from hpo2.study.config import StudyConfig, load_study_config
from hpo2.study.runner import StudyRunner
from hpo2.study.samplers import build_sampler
from hpo2.study.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_study(tmp_path: Path, **fields) -> Path:
    data = {"name": "t", "task": "logreg_breast_cancer", "budget": {"epochs": 2},
            "optimizers": ["sgd", "adam", "newton_cg"], "n_trials": 4, "report": False, **fields}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("sampler", ["tpe", "gp", "botorch", "cmaes", "random", "qmc"])
def test_each_sampler_runs_a_study(tmp_path, sampler):
    path = write_study(tmp_path, sampler={"name": sampler, "seed": 1, **({"n_startup_trials": 2} if sampler in ("gp", "botorch") else {})},
                       n_trials=6, enqueue_defaults=False, curvature_diagnostics=False)
    config, file = load_study_config(path)
    study = StudyRunner(config, file).run()
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6
    assert any(t.state == TrialState.COMPLETE for t in finished)
    assert {t.params["optimizer"] for t in finished} <= {"sgd", "adam", "newton_cg"}


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


def test_best_export_then_train_reproduces_the_best_validation_metric(tmp_path):
    path = write_study(tmp_path, n_trials=3)
    assert run_cli("study", "run", str(path)).exit_code == 0
    best_file = tmp_path / "best.yaml"
    result = run_cli("study", "best", str(path), "--export", str(best_file))
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(best_file.read_text())
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}")
    assert exported["optimizer"]["name"] == study.best_trial.params["optimizer"]
    from hpo2.config import load_train_config
    from hpo2.train import train_from_config

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
    assert by_opt["sophia"].state == TrialState.FAIL and "Gauss-Newton-Bartlett" in by_opt["sophia"].user_attrs["hpo2.reason"]
    assert by_opt["adam"].state == TrialState.COMPLETE
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    statuses = {r.data.params["optimizer"]: r.info.status for r in runs if "hpo2.trial_number" in r.data.tags}
    assert statuses == {"sgd": "KILLED", "sophia": "FAILED", "adam": "FINISHED"}


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


@pytest.mark.parametrize(
    "data,message",
    [
        ({"name": "x", "task": "digits_mlp", "sampler": {"name": "smac"}}, "sampler.name"),
        ({"name": "x", "task": "digits_mlp", "optimizers": ["newton"]}, "'newton' is not a known optimizer"),
        ({"name": "x", "task": "digits_mlp", "optimizers": [{"name": "sgd", "ranges": {"lr": [1.0, 0.1]}}]}, "ranges.lr = [1.0, 0.1]: give [low, high] with low < high"),
        ({"name": "x", "task": "digits_mlp", "n_trials": "many"}, "n_trials = 'many'"),
        ({"name": "x", "task": "digits_mlp", "objective": ["valid_loss", "wall_seconds"], "sampler": {"name": "cmaes"}}, "cmaes"),
        ({"name": "x y", "task": "digits_mlp"}, "name = 'x y'"),
        ({"name": "x", "task": {"name": "digits_mlp", "settings": {"batchsize": 3}}}, "unknown setting(s) batchsize"),
    ],
)
def test_bad_study_file_gives_the_field_path_and_exit_2(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("study", "run", str(path))
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_minimal_three_line_study_file_is_valid(tmp_path):
    (tmp_path / "s.yaml").write_text("name: quick\ntask: digits_mlp\nn_trials: 3\n")
    config, _ = load_study_config(tmp_path / "s.yaml")
    assert config.sampler.name == "tpe" and len(config.optimizers) >= 7 and config.budget.epochs == 2


def test_multi_objective_study_has_a_pareto_front(tmp_path):
    path = write_study(tmp_path, objective=["valid_loss", "grad_equivalents"], n_trials=4, curvature_diagnostics=False)
    result = run_cli("study", "run", str(path))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}")
    assert len(study.directions) == 2 and study.best_trials


def _distance_to_optimum(name: str, settings: dict) -> float:
    optimum = {"sgd": {"lr": 1e-2, "momentum": 0.5}, "adam": {"lr": 3e-4, "beta1": 0.85, "beta2": 0.99}}[name]
    d = (math.log10(settings["lr"]) - math.log10(optimum["lr"])) ** 2
    return d + sum(((settings[k] - v) * 5) ** 2 for k, v in optimum.items() if k != "lr")


@pytest.mark.parametrize("model_sampler", ["gp", "botorch"])
def test_model_samplers_propose_settings_from_the_model_not_at_random(model_sampler):
    """On a cheap synthetic objective, the late proposals of GP/BoTorch for each
    optimizer's settings sit near that optimizer's optimum; random's do not."""

    def late_distances(sampler: str) -> list[float]:
        balanced = {"allocation": "balanced"} if sampler != "random" else {}
        config = StudyConfig(name="s", task="digits_mlp", optimizers=["sgd", "adam"],
                             sampler={"name": sampler, "seed": 3, "n_startup_trials": 5, **balanced}, n_trials=30)
        space = SearchSpace(config)
        study = optuna.create_study(direction="minimize", sampler=build_sampler(config, space))
        study.optimize(lambda trial: _distance_to_optimum(*space.suggest(trial)), n_trials=30)
        late = study.trials[-10:]
        assert {t.params["optimizer"] for t in late} == {"sgd", "adam"}  # balanced allocation
        return [t.value for t in late]

    model, random = late_distances(model_sampler), late_distances("random")
    assert statistics.median(model) < 0.2 * statistics.median(random)
    assert statistics.median(model) < 0.2


def test_every_shipped_study_file_is_valid():
    from hpo2.config import validate
    from hpo2.study.config import StudyConfig as Schema

    files = sorted(Path(__file__).resolve().parent.parent.glob("studies/*.yaml"))
    names = set()
    for file in files:
        data = yaml.safe_load(file.read_text())
        if "task" in data and "name" in data and "optimizer" not in data:
            config = validate(Schema, data, str(file))
            names.add(config.task.name)
    from hpo2.tasks import TASKS

    assert names == set(TASKS)  # a ready-to-run study for every task


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


def test_qmc_sampler_seed_changes_the_design():
    from hpo2.study.config import SamplerConfig
    from hpo2.study.samplers import plain_sampler

    def first_points(seed: int) -> list[float]:
        study = optuna.create_study(sampler=plain_sampler(SamplerConfig(name="qmc"), seed))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=4)
        return [t.params["x"] for t in study.trials]

    assert first_points(0) == first_points(0)
    assert first_points(0) != first_points(1)
