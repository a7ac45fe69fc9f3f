"""The Fashion-MNIST deep autoencoder task (Hinton & Salakhutdinov's architecture)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hpo2.tasks import build_task
from hpo2.tasks.image_classification import FASHION_MNIST_DEFAULT
from hpo2.train import Budget, run_training

pytestmark = pytest.mark.skipif(
    not Path(FASHION_MNIST_DEFAULT).is_dir(), reason="dataset-fashion-mnist is not installed"
)


def test_architecture_data_and_loss() -> None:
    task = build_task("fmnist_autoencoder", {"n_train": 64, "n_valid": 32})
    linears = [m for m in task.model if isinstance(m, nn.Linear)]
    widths = [m.in_features for m in linears] + [linears[-1].out_features]
    assert widths == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    # logistic units everywhere but the linear 30-unit code and the output logits
    kinds = [type(m).__name__ for m in task.model]
    assert kinds.count("Sigmoid") == 6 and kinds[6:8] == ["Linear", "Linear"] and kinds[-1] == "Linear"
    assert isinstance(task.loss_fn, nn.BCEWithLogitsLoss)
    assert task.train.x.shape == (64, 784) and torch.equal(task.train.x, task.train.y)
    assert float(task.train.x.min()) >= 0 and float(task.train.x.max()) <= 1
    assert task.metric == "reconstruction_error" and not task.higher_is_better


def test_hessian_free_in_martens_regime_lowers_the_reconstruction_error() -> None:
    task = build_task("fmnist_autoencoder", {"n_train": 200, "n_valid": 50})
    opt = {"name": "hessian_free", "settings": {"batch_size": "full", "curvature_fraction": 0.1, "cg_max_iter": 4}}
    result = run_training(task, opt, Budget(epochs=2), device="cpu")
    assert result.steps == 2
    losses = [d["loss"] for d in result.step_diagnostics]
    assert losses[-1] < losses[0]
    assert all(d["curvature_samples"] == 20 for d in result.step_diagnostics)
