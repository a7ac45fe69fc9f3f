"""Gauss-Newton-Bartlett diagonal (Sophia's estimator) against the exact
diag(J^T H_L J) in float64, for every reduction, class weights and ignore_index:
the mean of many probes must converge to the true diagonal (statistical test)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo2.curvature import gauss_newton_bartlett_diagonal
from tests.reference import dense_ggn

LOSSES = {
    "ce-mean": lambda: nn.CrossEntropyLoss(),
    "ce-sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
    "ce-weighted": lambda: nn.CrossEntropyLoss(weight=torch.tensor([0.2, 3.0, 1.0], dtype=torch.float64)),
    "ce-ignore": lambda: nn.CrossEntropyLoss(ignore_index=2),
    "mse-sum": lambda: nn.MSELoss(reduction="sum"),
    "bce-sum": lambda: nn.BCEWithLogitsLoss(reduction="sum"),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_gnb_mean_converges_to_the_exact_ggn_diagonal(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    loss_fn = LOSSES[name]()
    if name.startswith("ce"):
        y = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    elif name.startswith("bce"):
        y = torch.rand(8, 3, dtype=torch.float64)
    else:
        y = torch.randn(8, 3, dtype=torch.float64)
    exact = torch.diagonal(dense_ggn(model, loss_fn, x, y))
    params = list(model.parameters())
    outputs = model(x)
    generator = torch.Generator().manual_seed(1)
    n_probes = 600
    estimate = gauss_newton_bartlett_diagonal(outputs, params, loss_fn, n_probes, generator, targets=y)
    flat = torch.cat([e.reshape(-1) for e in estimate])
    # each coordinate is a mean of n_probes i.i.d. squares; 6 standard errors of a chi-square-like variable
    tolerance = 6 * (2 / n_probes) ** 0.5 * exact.abs() + 1e-12
    assert torch.all((flat - exact).abs() <= tolerance), (flat / exact)
