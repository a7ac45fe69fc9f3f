"""The training loop: budgets, divergence, callbacks, time-to-target, determinism, `hpo2 train`, and an
optimizer's data regime (the gradient batch it declares, one pass over the samples per epoch)."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.errors import SettingsError
from hpo2.interface.cli import app
from hpo2.optim import from_config
from hpo2.tasks import build_task
from hpo2.train import Budget, run_training

ADAM = {"name": "adam", "settings": {"lr": 1e-2}}


def test_epoch_budget_runs_whole_epochs():
    task = build_task("digits_mlp")  # 1200 train, batch 64 -> 18 steps per epoch
    result = run_training(task, ADAM, Budget(epochs=2), device="cpu")
    assert result.steps == 36 and [e.epoch for e in result.history] == [1.0, 2.0]


def test_step_budget_stops_mid_epoch_and_evaluates_at_the_end():
    result = run_training(build_task("digits_mlp"), ADAM, Budget(steps=5), device="cpu")
    assert result.steps == 5 and result.history[-1].step == 5


def test_grad_equivalent_budget_counts_curvature_products():
    opt = {"name": "newton_cg", "settings": {"cg_max_iter": 5, "damping": 0.1}}
    result = run_training(build_task("digits_mlp"), opt, Budget(grad_equivalents=40), device="cpu")
    per_step = [d["grad_equivalents"] for d in result.step_diagnostics]
    assert sum(per_step[:-1]) < 40 <= sum(per_step) == pytest.approx(result.grad_equivalents)
    assert all(d["n_hvp"] >= 1 for d in result.step_diagnostics)


def test_seconds_budget_stops_on_time():
    result = run_training(build_task("digits_mlp"), ADAM, Budget(seconds=0.3, epochs=10_000), device="cpu")
    # The seconds limit, not the 10,000 epochs (180,000 steps), ended the run.
    assert result.status == "completed" and result.wall_seconds >= 0.3 and result.steps < 180_000


def test_divergence_is_reported_not_raised():
    result = run_training(build_task("quadratic_deep"), {"name": "sgd", "settings": {"lr": 5.0, "momentum": 0.0}},
                          Budget(epochs=3), device="cpu")
    assert result.status == "diverged"
    assert "non-finite" in result.reason or "exceeded" in result.reason


def test_report_callback_can_stop_the_run():
    seen = []

    def report(e):
        seen.append(e)
        return len(seen) == 2

    result = run_training(build_task("digits_mlp"), ADAM, Budget(epochs=5), device="cpu", report=report)
    assert result.status == "stopped" and len(result.history) == 2 and result.steps == 36


def test_time_to_target_is_recorded_when_the_target_is_reached():
    task = build_task("logreg_breast_cancer")
    result = run_training(task, {"name": "newton_cg", "settings": {"damping": 1e-4}}, Budget(epochs=10), device="cpu")
    first = next(e for e in result.history if e.valid_metric >= task.target)
    assert result.time_to_target_grad_equivalents == first.grad_equivalents
    assert result.time_to_target_seconds == first.wall_seconds
    unreached = run_training(
        build_task("logreg_breast_cancer"), {"name": "sgd", "settings": {"lr": 1e-6}}, Budget(steps=1), device="cpu"
    )
    assert unreached.time_to_target_seconds is None


def test_training_is_deterministic_with_a_seed_on_cpu():
    runs = [run_training(build_task("digits_mlp", {"seed": 3}), {"name": "sophia", "settings": {"lr": 1e-2}},
                         Budget(epochs=1), seed=3, device="cpu") for _ in range(2)]
    assert [e.valid_loss for e in runs[0].history] == [e.valid_loss for e in runs[1].history]


def test_unavailable_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_training(build_task("digits_mlp"), ADAM, Budget(steps=1), device="cuda")


def test_hpo2_train_end_to_end_with_mlflow(tmp_path):
    config = {
        "task": {"name": "logreg_breast_cancer"},
        "optimizer": {"name": "lbfgs", "settings": {"max_iter": 5, "history_size": 5}},
        "budget": {"epochs": 3},
        "device": "cpu",
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "c.yaml"), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "valid metric" in result.output
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hpo2-train").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer"] == "lbfgs" and run.data.params["history_size"] == "5"
    history = client.get_metric_history(run.info.run_id, "valid_metric")
    assert len(history) == 3 and all(0 <= m.value <= 1 for m in history)
    assert client.get_metric_history(run.info.run_id, "diag.grad_equivalents")


@pytest.mark.parametrize(
    "config,message",
    [
        ({"task": {"name": "nope"}, "optimizer": {"name": "sgd"}}, "task.name: 'nope' is not a known task"),
        (
            {"task": {"name": "digits_mlp"}, "optimizer": {"name": "sgd", "settings": {"lr": -1}}},
            "optimizer.settings.lr = -1",
        ),
        ({"task": {"name": "digits_mlp"}, "optimizer": {"name": "sgd"}, "budget": {}}, "set at least one of epochs"),
        (
            {"task": {"name": "digits_mlp"}, "optimizer": {"name": "sgd"}, "bugdet": {"epochs": 1}},
            "bugdet: unknown key (did you mean 'budget'?); allowed: task, optimizer, budget",
        ),
    ],
)
def test_hpo2_train_bad_config_exits_2_with_the_field(tmp_path, config, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_full_batch_hessian_free_takes_one_step_per_epoch_on_the_whole_set() -> None:
    task = build_task("digits_mlp")  # 1200 train, task batch 64
    seen: list[int] = []
    original = task.loss_fn.forward

    def spy(outputs, targets):  # type: ignore[no-untyped-def]
        seen.append(outputs.shape[0])
        return original(outputs, targets)

    task.loss_fn.forward = spy  # type: ignore[method-assign]
    opt = {"name": "hessian_free", "settings": {"cg_max_iter": 3, "curvature_fraction": 0.1}}
    result = run_training(task, opt, Budget(epochs=2), device="cpu")
    assert result.steps == 2 and [e.epoch for e in result.history] == [1.0, 2.0]
    n = len(task.train)
    assert max(seen) == n and n // 10 in seen  # the gradient on every sample, the curvature on a tenth
    counted = sum(d["grad_equivalents"] for d in result.step_diagnostics)
    assert result.grad_equivalents == pytest.approx(counted * n / 64)


@pytest.mark.parametrize("batch_size, steps", [(None, 18), (256, 4), (100_000, 1)])
def test_batch_size_setting_sets_the_steps_per_epoch(batch_size: int | None, steps: int) -> None:
    opt = {"name": "newton_cg", "settings": {"cg_max_iter": 2, "batch_size": batch_size}}
    result = run_training(build_task("digits_mlp"), opt, Budget(epochs=1), device="cpu")
    assert result.steps == steps


def test_a_bad_batch_size_names_the_field() -> None:
    with pytest.raises(SettingsError, match="batch_size"):
        from_config({"name": "hessian_free", "settings": {"batch_size": 0}}, [])
