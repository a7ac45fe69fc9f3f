"""Task data placed on the trial's device once: no per-step copy for a split that fits,
per-batch copies for one that does not, the same batches for the same seed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from hpo2.tasks import build_task
from hpo2.tasks.base import Split
from hpo2.tasks.placement import DeviceBatches, fits, split_bytes
from hpo2.train import Budget, run_training
from tests.conftest import DEVICES


@contextmanager
def counting_copies() -> Iterator[list[tuple[torch.Size, str]]]:
    """Record every ``Tensor.to(device)`` called from Python while the block runs (shape,
    device); dtype-only conversions (a metric's ``.to(targets.dtype)``) are not copies between devices."""
    calls: list[tuple[torch.Size, str]] = []
    original = torch.Tensor.to

    def counted(self: torch.Tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, torch.device | str):
            calls.append((self.shape, str(target)))
        return original(self, *args, **kwargs)

    torch.Tensor.to = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        torch.Tensor.to = original  # type: ignore[method-assign]


def _split(n: int = 40) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))


def test_threshold_keeps_what_fits_and_host_memory_always() -> None:
    split = _split()
    nbytes = split_bytes(split)
    assert nbytes == 40 * 3 * 4 + 40 * 8
    assert fits(nbytes, free=None)  # host memory: the data are there already
    assert fits(nbytes, free=2 * nbytes)  # exactly half of the free memory
    assert not fits(nbytes, free=2 * nbytes - 1)
    assert not fits(nbytes, free=4 * nbytes, fraction=0.2)


@pytest.mark.parametrize("device", DEVICES)
def test_resident_batches_gather_from_the_one_device_copy_without_copies(device: str) -> None:
    dev = torch.device(device)
    batches = DeviceBatches(_split(), dev, seed=0)
    assert batches.resident and batches.split.x.device.type == dev.type
    with counting_copies() as calls:
        order = batches.epoch_order()
        for i in range(0, 40, 8):
            x, y = batches.batch(order[i : i + 8])
            assert x.device.type == dev.type and y.device.type == dev.type
            assert torch.equal(x, batches.split.x[order[i : i + 8]])
    assert calls == []  # no Tensor.to per batch (nor per epoch: the order is drawn on the device)
    assert order.device.type == dev.type
    assert batches.on_device() is batches.split


def test_a_split_that_does_not_fit_is_copied_batch_by_batch() -> None:
    split = _split()
    batches = DeviceBatches(split, torch.device("cpu"), seed=0, resident=False)
    assert batches.split.x.data_ptr() == split.x.data_ptr()  # left where it was
    with counting_copies() as calls:
        order = batches.epoch_order()
        for i in range(0, 40, 8):
            batches.batch(order[i : i + 8])
    assert [shape[0] for shape, _ in calls] == [8, 8] * 5  # inputs and targets of each batch, nothing else


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    orders = [DeviceBatches(_split(), torch.device("cpu"), seed=s).epoch_order() for s in (3, 3, 4)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    assert sorted(orders[0].tolist()) == list(range(40))


def _train(steps: int, seed: int = 0, device: str = "cpu") -> tuple[int, float]:
    task = build_task("logreg_breast_cancer", {"batch_size": 50})
    with counting_copies() as calls:
        result = run_training(task, {"name": "adam"}, Budget(steps=steps), seed=seed, device=device)
    data_copies = sum(1 for shape, _ in calls if shape and shape[0] in (50, 400, 85))  # batches, train, valid
    return data_copies, result.history[-1].valid_metric


@pytest.mark.parametrize("device", DEVICES)
def test_the_training_loop_copies_the_data_once_per_trial_not_per_step(device: str) -> None:
    few, metric_few = _train(steps=2, device=device)
    many, _ = _train(steps=16, device=device)  # two epochs: eight steps each
    assert few == many, "data copied per step or per epoch"
    assert few == 4  # train and validation inputs and targets, once
    assert _train(steps=2, device=device)[1] == metric_few  # same seed, same metric
