"""Newton-CG: diagnostics on a non-finite loss (issue 12)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hpo2.optim import BatchClosure, NewtonCG


def test_a_non_finite_loss_still_reports_its_cost() -> None:
    model = nn.Linear(2, 1).double()
    x, y = torch.full((4, 2), math.nan, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    opt = NewtonCG(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    assert opt.diagnostics["status"] == "nonfinite_loss"
    assert opt.diagnostics["grad_equivalents"] >= 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
