"""Small tasks on data that ships with Python packages or is generated: they run
in seconds on a CPU and need no files.

* ``digits_mlp`` -- scikit-learn's 8x8 digits (1,797 images), MLP 64-64-10 (tanh).
* ``logreg_breast_cancer`` -- scikit-learn's breast-cancer set (569 x 30),
  L2-regularised logistic regression (coefficient 1e-2); convex, so second-order
  methods should shine.
* ``mnist1d_mlp`` -- MNIST-1D (Greydanus 2020), regenerated locally with
  ``mnist1d.data.make_dataset(get_dataset_args())`` (identical to the published
  4,000 / 1,000 set; never ``get_dataset()``, which downloads); the paper's MLP
  (40-100-100-10, ReLU) reaches 68% test accuracy.

Splits are seeded permutations; features are standardised on the training split.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

from hpo2.tasks.base import Split, Task, TaskSettings, accuracy, mlp, seeded_split
from hpo2.tasks.losses import WeightCost


def _standardised_splits(
    x: np.ndarray, y: np.ndarray, sizes: tuple[int, int, int], seed: int, y_dtype: torch.dtype
) -> tuple[Split, Split, Split]:
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=y_dtype)
    train_idx, valid_idx, test_idx = seeded_split(len(xt), sizes, seed)
    mean, std = xt[train_idx].mean(0), xt[train_idx].std(0).clamp_min(1e-6)
    xt = (xt - mean) / std
    return tuple(Split(xt[i], yt[i]) for i in (train_idx, valid_idx, test_idx))  # type: ignore[return-value]  # exactly three splits


def digits_mlp(settings: TaskSettings) -> Task:
    """Digits, 1,200 / 300 / 297 split, batch 64; target 95% validation accuracy."""
    data = load_digits()
    train, valid, test = _standardised_splits(data.data, data.target, (1200, 300, 297), settings.seed, torch.int64)
    return Task(
        name="digits_mlp", model=mlp([64, 64, 10], nn.Tanh), loss_fn=nn.CrossEntropyLoss(),
        train=train, valid=valid, test=test, batch_size=64, metric="accuracy", metric_fn=accuracy,
        higher_is_better=True, target=0.95, reference="",
    )  # fmt: skip


def logreg_breast_cancer(settings: TaskSettings) -> Task:
    """Breast cancer, 400 / 85 / 84 split, batch 400 (full batch); target 96% validation accuracy."""
    data = load_breast_cancer()
    train, valid, test = _standardised_splits(
        data.data, data.target[:, None], (400, 85, 84), settings.seed, torch.float32
    )
    model = nn.Linear(30, 1)
    return Task(
        name="logreg_breast_cancer", model=model, loss_fn=WeightCost(nn.BCEWithLogitsLoss(), [model.weight], 1e-2),
        train=train, valid=valid, test=test, batch_size=400, metric="accuracy", metric_fn=accuracy,
        higher_is_better=True, target=0.96, reference="",
    )  # fmt: skip


def mnist1d_arrays() -> dict[str, np.ndarray]:
    """The published MNIST-1D arrays, regenerated from their fixed recipe (no network)."""
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


def mnist1d_mlp(settings: TaskSettings) -> Task:
    """MNIST-1D: the 4,000 training samples split 3,600 / 400 (seeded), the 1,000
    test samples as test; batch 100; target 60% validation accuracy.  Published MLP
    test accuracy: 68% (Greydanus 2020, table 1)."""
    data = mnist1d_arrays()
    x = torch.tensor(data["x"], dtype=torch.float32)
    y = torch.tensor(data["y"], dtype=torch.int64)
    train_idx, valid_idx = seeded_split(len(x), (3600, 400), settings.seed)
    test = Split(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"], dtype=torch.int64))
    return Task(
        name="mnist1d_mlp", model=mlp([40, 100, 100, 10]), loss_fn=nn.CrossEntropyLoss(),
        train=Split(x[train_idx], y[train_idx]), valid=Split(x[valid_idx], y[valid_idx]), test=test,
        batch_size=100, metric="accuracy", metric_fn=accuracy, higher_is_better=True, target=0.60,
        reference="MNIST-1D MLP test accuracy 68% (Greydanus 2020)",
    )  # fmt: skip
