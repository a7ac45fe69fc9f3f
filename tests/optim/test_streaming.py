"""Large-batch regimes on a Dataset: the gradient accumulated over loader batches (StreamingClosure)
equals the whole batch's, Hessian-free and Newton-CG train on it and count as on tensors, memory is
bounded by the loader batch, and optimizers that cannot stream refuse clearly."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from hpo2.optim import KFAC, LBFGS, BatchClosure, HessianFree, StreamingClosure
from hpo2.tasks.base import Split, Task, accuracy
from hpo2.tasks.loading import DatasetBatches
from hpo2.train import Budget, run_training

CPU = torch.device("cpu")


def _data(n: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, (x[:, 0] - x[:, 2] > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _streamed(x: Tensor, y: Tensor, model: nn.Module, piece: int, seed: int = 2) -> tuple[StreamingClosure, Tensor]:
    """A streaming closure over all samples in a seeded order (and that order)."""
    source = DatasetBatches(TensorDataset(x, y), CPU, seed)
    order = source.epoch_order()
    return StreamingClosure(model, nn.CrossEntropyLoss(), source.window(order, piece)), order


def test_the_accumulated_gradient_is_the_whole_batch_gradient() -> None:
    x, y = _data(100)  # six loader batches of 16 and one of 4: weighed by size, not count
    model = _model()
    params = list(model.parameters())
    closure, order = _streamed(x, y, model, piece=16)
    loss, grads = closure.value_and_grad(params)
    whole = nn.CrossEntropyLoss()(model(x[order]), y[order])
    for streamed, reference in zip(grads, torch.autograd.grad(whole, params)):
        torch.testing.assert_close(streamed, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, whole.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(closure.loss_value(), whole.detach(), rtol=0, atol=1e-6)


def test_the_preconditioner_squares_accumulate_to_the_whole_batch_squares() -> None:
    x, y = _data(100)
    model = _model()
    closure, order = _streamed(x, y, model, piece=16)
    *_, streamed, _ = HessianFree(model.parameters())._gradient_and_squares(closure, True, retain=False)
    *_, whole, _ = HessianFree(model.parameters())._gradient_and_squares(
        BatchClosure(model, nn.CrossEntropyLoss(), x[order], y[order]), True, retain=False)
    assert streamed is not None and whole is not None
    torch.testing.assert_close(streamed, whole, rtol=1e-10, atol=1e-14)


def _task(dataset: bool, n: int = 96) -> Task:
    x, y = _data(n)
    make = TensorDataset if dataset else Split
    return Task(name="toy", model=_model(), loss_fn=nn.CrossEntropyLoss(), train=make(x, y), valid=make(x[:30], y[:30]),
                test=None, batch_size=16, metric="accuracy", metric_fn=accuracy, higher_is_better=True, target=0.9)


HF_FULL = {"name": "hessian_free", "settings": {"batch_size": "full", "curvature_fraction": 0.1, "cg_max_iter": 20}}
NEWTON_FULL = {"name": "newton_cg", "settings": {"batch_size": "full", "curvature_fraction": 0.1, "cg_max_iter": 10}}


# the LayerNorm's parameters take Hessian-free's per-sample preconditioner path (warned once, as documented)
@pytest.mark.filterwarnings("ignore:HessianFree. no per-layer statistics")
@pytest.mark.parametrize("optimizer", [HF_FULL, NEWTON_FULL], ids=["hessian_free", "newton_cg"])
def test_full_batch_trains_on_a_dataset_and_counts_like_tensors(optimizer: dict) -> None:
    streamed_task, tensor_task = _task(dataset=True), _task(dataset=False)
    for task in (streamed_task, tensor_task):
        task.model = nn.Sequential(task.model[0], nn.LayerNorm(8).double(), *task.model[1:])
    streamed = run_training(streamed_task, optimizer, Budget(steps=3), device="cpu")
    tensors = run_training(tensor_task, optimizer, Budget(steps=3), device="cpu")
    losses = [d["loss"] for d in streamed.step_diagnostics]
    assert streamed.status == "completed" and losses[-1] < losses[0]
    assert [d["status"] for d in streamed.step_diagnostics] == ["ok"] * 3
    # the same work on both paths (its price is measured on each, so the totals differ by the clock's noise)
    for key in ("n_grad", "n_hvp", "n_loss"):
        assert [d[key] for d in streamed.step_diagnostics] == pytest.approx(
            [d[key] for d in tensors.step_diagnostics], rel=1e-12)
    # one step an epoch (96 samples in one batch), its gradient worth 96 / 16 = 6 task-batch gradients
    for run in (streamed, tensors):
        assert run.grad_equivalents == pytest.approx(6 * sum(d["grad_equivalents"] for d in run.step_diagnostics))
        assert all(d["n_grad"] >= 1 for d in run.step_diagnostics)
    for a, b in zip(streamed_task.model.parameters(), tensor_task.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


class Widest(nn.Module):
    """Records the largest batch any forward pass saw."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.widest = inner, 0

    def forward(self, x: Tensor) -> Tensor:
        self.widest = max(self.widest, x.shape[0])
        return self.inner(x)


def test_a_streamed_step_never_holds_more_than_one_loader_batch() -> None:
    task = _task(dataset=True)
    task.model = Widest(task.model)
    hf = {"name": "hessian_free", "settings": {"batch_size": "full", "curvature_fraction": 0.5, "cg_max_iter": 5}}
    result = run_training(task, hf, Budget(steps=2), device="cpu", eval_every_steps=1000)
    assert task.model.widest == 16  # the task's batch; 96 on the tensor path, a 48-sample chunk uncapped
    assert [d["curvature_samples"] for d in result.step_diagnostics] == [16, 16]


def test_svrg_snapshots_a_dataset_as_it_does_tensors() -> None:
    svrg = {"name": "svrg", "settings": {"chunk_size": 20}}
    streamed = run_training(_task(dataset=True), svrg, Budget(steps=8), device="cpu")
    tensors = run_training(_task(dataset=False), svrg, Budget(steps=8), device="cpu")
    assert [d["loss"] for d in streamed.step_diagnostics] == pytest.approx(
        [d["loss"] for d in tensors.step_diagnostics], rel=1e-12)
    assert streamed.grad_equivalents == tensors.grad_equivalents


def test_optimizers_that_need_the_whole_batch_refuse_a_streaming_closure() -> None:
    x, y = _data(40)
    model = _model()
    closure, _ = _streamed(x, y, model, piece=8)
    with pytest.raises(ValueError, match="no single loss graph"):
        LBFGS(model.parameters()).step(closure)
    with pytest.raises(ValueError, match="KFAC needs the whole batch in memory"):
        KFAC(model.parameters()).step(closure)
    with pytest.raises(ValueError, match="no single graph; ask for a chunk"):
        closure.evaluate(1.0)
