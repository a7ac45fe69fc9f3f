"""Tasks: real file formats, deterministic generators, DeepOBS's quadratic, one epoch lowers the loss."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo2.errors import DataMissingError
from hpo2.optim import NewtonCG
from hpo2.optim.closure import BatchClosure
from hpo2.tasks import TASKS, build_task
from hpo2.tasks.files import read_idx
from hpo2.tasks.image_classification import FASHION_MNIST_DEFAULT
from hpo2.tasks.synthetic import curves_images, deepobs_quadratic_hessian, haar_rotation
from hpo2.train import Budget, evaluate, run_training


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an IDX file by the format's spec (independent of hpo2's reader)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def write_tiny_idx_set(directory: Path, n_train: int = 120, n_test: int = 30, compress: bool = True) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(directory / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train), compress)
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(directory / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), compress)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_reads_the_real_format(tmp_path, compress):
    array = np.random.default_rng(1).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "x", array, compress)
    got = read_idx(tmp_path / ("x.gz" if compress else "x"))
    assert got.shape == (7, 28, 28) and np.array_equal(got, array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def _one_epoch_lowers_loss(task, optimizer=None) -> None:
    before, _ = evaluate(task, task.train.x, task.train.y)
    result = run_training(task, optimizer or {"name": "adam", "settings": {"lr": 3e-3}}, Budget(epochs=1), device="cpu")
    after, _ = evaluate(task, task.train.x, task.train.y)
    assert result.status == "completed"
    assert after < before


@pytest.mark.parametrize("name", ["fmnist_mlp", "fmnist_2c2d", "mnist_mlp"])
def test_idx_tasks_train_on_tiny_files(tmp_path, name):
    write_tiny_idx_set(tmp_path)
    task = build_task(name, {"data_dir": str(tmp_path), "batch_size": 20})
    assert len(task.train) == 100 and len(task.valid) == 20 and len(task.test) == 30
    assert task.train.x.shape[1:] == (1, 28, 28) and float(task.train.x.max()) <= 1.0
    _one_epoch_lowers_loss(task)


@pytest.mark.skipif(not Path(FASHION_MNIST_DEFAULT).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist_package_is_read():
    task = build_task("fmnist_mlp", {"n_train": 512, "n_valid": 256})
    assert task.test is not None and len(task.test) == 10000
    assert set(task.train.y.unique().tolist()) <= set(range(10))
    _one_epoch_lowers_loss(task)


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
    _one_epoch_lowers_loss(task)
    with pytest.raises(DataMissingError, match="download=true"):
        build_task("cifar10_3c3d", {"data_dir": str(tmp_path / "none")})


@pytest.mark.parametrize(
    "name,settings",
    [
        ("digits_mlp", {}),
        ("logreg_breast_cancer", {}),
        ("mnist1d_mlp", {"n_train": 800}),
        ("quadratic_deep", {}),
        ("curves_autoencoder", {"size_train": 300, "size_valid": 50, "size_test": 50, "batch_size": 50}),
    ],
)
def test_small_tasks_build_and_one_epoch_lowers_loss(name, settings):
    _one_epoch_lowers_loss(build_task(name, settings))


def test_generators_are_deterministic():
    a, b = curves_images(20, seed=5), curves_images(20, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, curves_images(20, seed=6))
    assert a.shape == (20, 784) and 0 <= float(a.min()) and float(a.max()) <= 1
    assert (a > 0.5).sum(1).min() > 5  # every image shows a curve
    m1, m2 = build_task("mnist1d_mlp"), build_task("mnist1d_mlp")
    assert torch.equal(m1.train.x, m2.train.x) and len(m1.train) + len(m1.valid) == 4000 and len(m1.test) == 1000


def test_deepobs_quadratic_is_built_as_deepobs_builds_it():
    rng = np.random.RandomState(42)
    eigs = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    rotation = haar_rotation(100, rng)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(100), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    q = deepobs_quadratic_hessian()
    np.testing.assert_allclose(q, q.T, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(q), np.sort(eigs), atol=1e-10)
    task = build_task("quadratic_deep")
    np.testing.assert_allclose(task.train.x.numpy(), np.random.RandomState(42).normal(0, 0.6, (1000, 100)), rtol=1e-6)
    assert torch.equal(task.model.theta.detach(), torch.ones(100))


def test_full_batch_newton_step_lands_on_the_quadratic_optimum():
    task = build_task("quadratic_deep")
    task.model.double()
    task.loss_fn.double()
    x, y = task.train.x.double(), task.train.y.double()
    opt = NewtonCG(task.model.parameters(), damping=0.0, cg_max_iter=200, cg_tol=1e-12, globalization="none")
    opt.step(BatchClosure(task.model, task.loss_fn, x, y))
    torch.testing.assert_close(task.model.theta.detach(), x.mean(0), rtol=1e-8, atol=1e-9)


def test_every_task_states_its_target_and_split():
    assert {"fmnist_mlp", "fmnist_2c2d", "curves_autoencoder", "mnist1d_mlp", "digits_mlp",
            "logreg_breast_cancer", "quadratic_deep", "mnist_mlp", "cifar10_3c3d"} <= set(TASKS)
    for spec in TASKS.values():
        assert spec.build.__doc__ and spec.summary


@pytest.mark.parametrize("name", ["digits_mlp", "logreg_breast_cancer", "quadratic_deep", "mnist1d_mlp"])
def test_the_registered_direction_is_the_built_tasks(name):
    """A study reads ``higher_is_better`` from the registry without building data: it must be the task's own."""
    assert build_task(name, {"n_train": 64, "n_valid": 32}).higher_is_better is TASKS[name].higher_is_better


def test_a_registration_that_disagrees_with_its_task_is_refused(monkeypatch):
    spec = TASKS["quadratic_deep"]
    monkeypatch.setitem(TASKS, "quadratic_deep", dataclasses.replace(spec, higher_is_better=True))
    with pytest.raises(RuntimeError, match="built with higher_is_better=False, registered with True"):
        build_task("quadratic_deep", {"n_train": 64, "n_valid": 32})
