"""Your own job: regression on scikit-learn's diabetes set (442 patients, 10 features),
a small MLP, the root-mean-square error as the metric (lower is better).

The settings are the function's keyword arguments; their defaults are the
settings' defaults, and a study file sets or searches them::

    task: {entrypoint: "./task.py:build", settings: {hidden: 32}}
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_diabetes
from torch import Tensor, nn

import hpo2


def rmse(outputs: Tensor, targets: Tensor) -> float:
    """Root-mean-square error of a batch (hpo2 averages it over batches, weighted by size)."""
    return float(torch.sqrt(torch.mean((outputs - targets) ** 2)))


def build(hidden: int = 32, seed: int = 0) -> hpo2.Task:
    """Diabetes progression, MLP 10-hidden-1 (tanh), 342 / 100 split; target RMSE 0.8 (standardised y)."""
    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)[:, None]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, valid = order[:342], order[342:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = (y - y[train].mean()) / y[train].std()
    model = nn.Sequential(nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return hpo2.Task(
        name="diabetes_mlp", model=model, loss_fn=nn.MSELoss(),
        train=hpo2.Split(x[train], y[train]), valid=hpo2.Split(x[valid], y[valid]),
        batch_size=342, metric="rmse", metric_fn=rmse, higher_is_better=False, target=0.8,
    )
