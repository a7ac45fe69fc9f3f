"""BatchNorm and Dropout as documented in hpo2.curvature.batch_norm and hpo2.optim.closure: curvature
sees the batch's statistics, the running statistics move once per step, per-sample gradients use the
running statistics, and validation runs in eval mode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from hpo2.optim import BatchClosure, HessianFree, NewtonCG
from hpo2.tasks.base import Split, Task
from hpo2.train import Budget, evaluate, run_training
from tests.reference import dense_ggn, dense_hessian


def _bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


def _batch(n: int = 24, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _warm(model: nn.Module) -> nn.Module:
    """Running statistics away from their initial (0, 1), so that eval mode is a different function."""
    with torch.no_grad():
        for _ in range(3):
            model(2.0 + 3.0 * _batch(32, seed=9)[0])
    return model


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_curvature_products_see_the_batch_statistics(curvature: str) -> None:
    model, (x, y) = _warm(_bn_model()), _batch()
    loss_fn = nn.CrossEntropyLoss()
    opt = NewtonCG(model.parameters())
    _, _, operator, fraction = opt._gradient_and_curvature(BatchClosure(model, loss_fn, x, y), curvature, 0.5)
    assert fraction == 0.5
    v = torch.randn(operator.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dense = dense_ggn if curvature == "ggn" else dense_hessian
    reference = copy.deepcopy(model)  # the documented mode: train, normalised by the chunk's own statistics
    torch.testing.assert_close(operator.mv(v), dense(reference, loss_fn, x[:12], y[:12]) @ v)
    running = copy.deepcopy(model).eval()  # the other choice, which hpo2 does not make, differs
    assert not torch.allclose(operator.mv(v), dense(running, loss_fn, x[:12], y[:12]) @ v, rtol=1e-3)


def test_the_running_statistics_move_once_per_step() -> None:
    model, (x, y) = _bn_model(), _batch()
    expected = copy.deepcopy(model)
    with torch.no_grad():
        expected(x)  # one training forward pass at the step's starting point
    opt = HessianFree(model.parameters(), curvature_fraction=0.5, cg_max_iter=10)
    with pytest.warns(UserWarning, match="BatchNorm1d"):  # its parameters: per-sample preconditioner squares
        opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))  # gradient, chunk, backtracking, line search
    assert opt.diagnostics["status"] == "ok" and opt.diagnostics["ls_evals"] + opt.diagnostics["cg_iters"] > 2
    bn, reference = model[1], expected[1]
    torch.testing.assert_close(bn.running_mean, reference.running_mean)
    torch.testing.assert_close(bn.running_var, reference.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_hessian_free_preconditions_a_batch_norm_model_with_the_running_statistics() -> None:
    model, (x, y) = _bn_model(), _batch()
    opt = HessianFree(model.parameters(), curvature_fraction=1.0, cg_max_iter=10)
    losses = []
    with pytest.warns(UserWarning, match=r"1 \(BatchNorm1d\)"):
        for _ in range(3):
            losses.append(float(opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))))
    assert losses[-1] < losses[0] and model.training and model[1].training


def _dropout_task() -> Task:
    x, y = _batch(48)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, 3)).double()
    return Task(name="dropout", model=model, loss_fn=nn.CrossEntropyLoss(), train=Split(x, y), valid=Split(x, y),
                test=None, batch_size=16, metric="loss", metric_fn=None, higher_is_better=False, target=0.0)


def test_dropout_trains_with_a_warning_and_validation_turns_it_off() -> None:
    task = _dropout_task()
    hf = {"name": "hessian_free", "settings": {"batch_size": None, "cg_max_iter": 5}}
    with pytest.warns(UserWarning, match="dropout is active in training mode"):
        result = run_training(task, hf, Budget(steps=4), device="cpu")
    assert result.status == "completed" and task.model.training  # trained in train mode, mode kept
    first, second = evaluate(task, task.valid), evaluate(task, task.valid)
    assert first == second and task.model.training  # eval mode: no masks, the model's mode restored
    assert first[0] == result.history[-1].valid_loss
