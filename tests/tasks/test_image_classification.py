"""Image-classification tasks (hpo2.tasks.image_classification): IDX and CIFAR files the test writes, the
installed Fashion-MNIST package, and the message when it is missing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from hpo2.errors import DataMissingError
from hpo2.tasks import build_task
from hpo2.tasks.image_classification import FASHION_MNIST_DEFAULT
from tests.tasks.helpers import one_epoch_lowers_loss, write_tiny_idx_set


@pytest.mark.parametrize("name", ["fmnist_mlp", "fmnist_2c2d", "mnist_mlp"])
def test_idx_tasks_train_on_tiny_files(tmp_path, name):
    write_tiny_idx_set(tmp_path)
    task = build_task(name, {"data_dir": str(tmp_path), "batch_size": 20})
    assert len(task.train) == 100 and len(task.valid) == 20 and len(task.test) == 30
    assert task.train.x.shape[1:] == (1, 28, 28) and float(task.train.x.max()) <= 1.0
    one_epoch_lowers_loss(task)


@pytest.mark.skipif(not Path(FASHION_MNIST_DEFAULT).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist_package_is_read():
    task = build_task("fmnist_mlp", {"n_train": 512, "n_valid": 256})
    assert task.test is not None and len(task.test) == 10000
    assert set(task.train.y.unique().tolist()) <= set(range(10))
    one_epoch_lowers_loss(task)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataMissingError, match="apt-get install dataset-fashion-mnist"):
        build_task("fmnist_mlp", {"data_dir": str(tmp_path)})


def test_cifar10_task_reads_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 20).tolist()}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(batch, fh)
    task = build_task("cifar10_3c3d", {"data_dir": str(tmp_path), "batch_size": 30})
    assert len(task.train) == 90 and len(task.valid) == 10 and task.train.x.shape[1:] == (3, 32, 32)
    one_epoch_lowers_loss(task)
    with pytest.raises(DataMissingError, match="download=true"):
        build_task("cifar10_3c3d", {"data_dir": str(tmp_path / "none")})
