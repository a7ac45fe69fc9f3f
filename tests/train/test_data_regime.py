"""The training loop honours an optimizer's data regime (issue 12): the gradient
batch it declares, one pass over the samples per epoch, gradient-equivalents in
gradients on the task's batch."""

from __future__ import annotations

import pytest

from hpo2.errors import SettingsError
from hpo2.optim import from_config
from hpo2.tasks import build_task
from hpo2.train import Budget, run_training


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
