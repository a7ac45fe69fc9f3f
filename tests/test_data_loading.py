"""Dataset splits in the training loop: one pass per epoch, seeded order, the tensor path's batches,
streamed evaluation, a task's own metric, models with tuple outputs, and the Task's checks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset

from hpo2.errors import SettingsError
from hpo2.tasks.base import Split, Task, head
from hpo2.tasks.loading import DatasetBatches
from hpo2.train import Budget, evaluate, run_training

ADAM = {"name": "adam", "settings": {"lr": 1e-2}}


class CountingDataset(Dataset):
    """Tensors behind ``__getitem__``, counting and recording every read."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        self.reads.append(int(i))
        return self.x[i], self.y[i]


def _data(n: int = 96, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _task(train: object, valid: object, batch: int = 16, model: nn.Module | None = None,
          loss_fn: nn.Module | None = None, **extra: object) -> Task:
    torch.manual_seed(0)
    net = model if model is not None else nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    fields: dict = {"metric": "loss", "metric_fn": None, "higher_is_better": False, "target": 0.0, **extra}
    return Task(name="toy", model=net, loss_fn=loss_fn or nn.CrossEntropyLoss(), train=train, valid=valid,  # type: ignore[arg-type]
                test=None, batch_size=batch, **fields)


def test_an_epoch_reads_every_sample_once_in_the_seeded_order() -> None:
    x, y = _data(96)
    orders = []
    for seed in (3, 3, 4):
        train = CountingDataset(x, y)
        run_training(_task(train, Split(x[:20], y[:20])), ADAM, Budget(epochs=2), seed=seed, device="cpu")
        assert Counter(train.reads) == {i: 2 for i in range(96)}  # 96 / 16 = 6 steps an epoch, every sample once
        assert sorted(train.reads[:96]) == list(range(96)) and sorted(train.reads[96:]) == list(range(96))
        assert train.reads[:96] != train.reads[96:]  # a fresh order each epoch
        orders.append(train.reads)
    assert orders[0] == orders[1] and orders[0] != orders[2]
    # the tensor path's order on the CPU: the same seeded permutation
    assert orders[0][:96] == torch.randperm(96, generator=torch.Generator().manual_seed(3)).tolist()


def test_a_dataset_trains_exactly_as_the_same_tensors_do() -> None:
    x, y = _data(100)  # 100 / 16: six steps, four samples left out, as on the tensor path
    tensors = run_training(_task(Split(x, y), Split(x[:30], y[:30])), ADAM, Budget(epochs=2), device="cpu")
    dataset = run_training(_task(TensorDataset(x, y), TensorDataset(x[:30], y[:30])), ADAM, Budget(epochs=2),
                           device="cpu")  # fmt: skip
    assert dataset.steps == tensors.steps == 12
    assert [d["loss"] for d in dataset.step_diagnostics] == [d["loss"] for d in tensors.step_diagnostics]
    assert [e.valid_loss for e in dataset.history] == pytest.approx([e.valid_loss for e in tensors.history], 1e-12)


def test_loader_workers_give_the_same_batches() -> None:
    x, y = _data(40)
    orders = [DatasetBatches(TensorDataset(x, y), torch.device("cpu"), seed=5, workers=w).epoch_order() for w in (0, 2)]
    assert torch.equal(orders[0], orders[1])
    loader = DatasetBatches(TensorDataset(x, y), torch.device("cpu"), seed=5, workers=2)
    for _ in range(2):  # persistent workers: a second pass reads the new plan
        got = list(loader.batches([orders[0][:8], orders[0][8:16]]))
        assert torch.equal(got[1][0], x[orders[0][8:16]]) and torch.equal(got[0][1], y[orders[0][:8]])


def _mean_abs_error(outputs: Tensor, targets: Tensor) -> float:
    return float((outputs.softmax(1)[:, 1] - targets.double()).abs().mean())


def test_evaluation_streams_a_dataset_with_the_tasks_own_metric() -> None:
    x, y = _data(50)
    task = _task(Split(x, y), Split(x, y), batch=16)
    task.metric_fn, task.metric, task.higher_is_better, task.target = _mean_abs_error, "mae", False, 0.45
    on_tensors = evaluate(task, Split(x, y), batch_size=7)
    on_dataset = evaluate(task, TensorDataset(x, y))  # the task's batch, 16: a last batch of two
    assert on_dataset == pytest.approx(on_tensors, rel=1e-12, abs=0)
    result = run_training(_task(TensorDataset(x, y), TensorDataset(x, y), metric_fn=_mean_abs_error, metric="mae",
                                target=0.45), ADAM, Budget(epochs=3), device="cpu")  # fmt: skip
    metrics = [e.valid_metric for e in result.history]
    assert result.best_metric == min(metrics) and metrics[0] < 0.5  # lower is better, read off the task


class TwoHeads(nn.Module):
    """A model whose output needs a loss wrapper: logits and an auxiliary output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.head, self.aux = nn.Linear(8, 2), nn.Linear(8, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.head(h), self.aux(h)


class TwoHeadLoss(nn.Module):
    def forward(self, outputs: tuple[Tensor, Tensor], targets: Tensor) -> Tensor:
        logits, aux = outputs
        return nn.functional.cross_entropy(logits, targets) + 0.1 * aux.pow(2).mean()


def _two_head_task() -> Task:
    x, y = _data(64)
    torch.manual_seed(0)
    return _task(TensorDataset(x, y), TensorDataset(x[:20], y[:20]), model=TwoHeads().double(), loss_fn=TwoHeadLoss(),
                 metric_fn=lambda out, t: float((out[0].argmax(1) == t).double().mean()), metric="accuracy",
                 higher_is_better=True, target=0.9)  # fmt: skip


@pytest.mark.parametrize("optimizer", [ADAM, {"name": "newton_cg", "settings": {"curvature": "hessian"}},
                                       {"name": "lbfgs", "settings": {"max_iter": 2}}], ids=lambda o: o["name"])
def test_a_model_with_a_tuple_output_trains_and_evaluates(optimizer: dict) -> None:
    result = run_training(_two_head_task(), optimizer, Budget(steps=8), device="cpu")
    losses = [d["loss"] for d in result.step_diagnostics]
    assert result.status == "completed" and losses[-1] < losses[0]
    assert 0.0 <= result.history[-1].valid_metric <= 1.0


@pytest.mark.parametrize("preconditioner", [True, False])
def test_gauss_newton_on_a_tuple_output_is_a_clear_error(preconditioner: bool) -> None:
    hf = {"name": "hessian_free", "settings": {"preconditioner": preconditioner}}
    with pytest.raises(ValueError, match="HessianFree needs the model's output as one tensor .* returned a tuple"):
        run_training(_two_head_task(), hf, Budget(steps=1), device="cpu")


def test_an_optimizer_that_cannot_stream_is_refused_before_training() -> None:
    x, y = _data(64)
    train = CountingDataset(x, y)
    sam_hf = {"name": "hessian_free", "settings": {"batch_size": "full", "sam": {"rho": 0.05}}}
    with pytest.raises(SettingsError, match=r"settings.batch_size = 'full' .* SAM cannot .* at most the task's batch"):
        run_training(_task(train, Split(x, y)), sam_hf, Budget(steps=1), device="cpu")
    assert train.reads == []


def test_the_flatness_batch_and_n_train_work_on_a_dataset() -> None:
    x, y = _data(40)
    task = _task(TensorDataset(x, y), Split(x, y))
    first = task.first_samples(task.train, 32)
    assert torch.equal(first.x, x[:32]) and torch.equal(first.y, y[:32])
    short = head(TensorDataset(x, y), 10)
    assert isinstance(short, Subset) and len(short) == 10 and torch.equal(short[9][0], x[9])


class Stream(IterableDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from ()


@pytest.mark.parametrize("bad", [[(1, 2)], Stream(), torch.zeros(3)], ids=["list", "iterable", "tensor"])
def test_a_split_that_is_not_a_dataset_is_refused(bad: object) -> None:
    x, y = _data(8)
    with pytest.raises(TypeError, match=r"Task 'toy': train: got \w+; a split is an hpo2.Split"):
        _task(bad, Split(x, y))


def test_an_item_that_is_not_a_pair_is_a_clear_error() -> None:
    x, y = _data(8)
    triples = TensorDataset(x, y, y)
    with pytest.raises(TypeError, match="must be an \\(input, target\\) pair .* list of 3"):
        run_training(_task(triples, Split(x, y), batch=4), ADAM, Budget(steps=1), device="cpu")
