"""Newton-CG: diagnostics on a non-finite loss (issue 12)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpo2.optim import BatchClosure, NewtonCG
from tests.problems import Sin


def test_a_non_finite_loss_still_reports_its_cost() -> None:
    model = nn.Linear(2, 1).double()
    x, y = torch.full((4, 2), math.nan, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    opt = NewtonCG(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    assert opt.diagnostics["status"] == "nonfinite_loss"
    assert opt.diagnostics["grad_equivalents"] >= 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _sin_closure(model: Sin) -> BatchClosure:
    return BatchClosure(model, nn.MSELoss(), torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))


def test_gauss_newton_by_default_with_a_batch_closure_hessian_with_a_plain_one() -> None:
    model = Sin(1.4)
    opt = NewtonCG(model.parameters())
    opt.step(_sin_closure(model))
    assert opt.diagnostics["curvature"] == "ggn"
    opt.step(lambda: torch.sin(model.w * 1.0).pow(2).sum())
    assert opt.diagnostics["curvature"] == "hessian"


@pytest.mark.parametrize("globalization", ["armijo", "strong_wolfe", "none"])
def test_lm_damping_follows_the_closed_form_reduction_ratio(globalization: str) -> None:
    """f(w) = sin(w)^2, G = 2 cos(w)^2: rho = (f(w0 + s) - f(w0)) / (g s + G s^2 / 2)
    for the step s actually taken; lambda x 3/2 below 1/4, x 2/3 above 3/4."""
    lam, w0 = 1e-3, 1.4
    model = Sin(w0)
    opt = NewtonCG(model.parameters(), damping=lam, globalization=globalization, lr=0.5 if globalization == "none" else 1.0)
    opt.step(_sin_closure(model))
    s = float(model.w.detach()) - w0
    g, gn = 2 * math.sin(w0) * math.cos(w0), 2 * math.cos(w0) ** 2
    expected = (math.sin(w0 + s) ** 2 - math.sin(w0) ** 2) / (g * s + 0.5 * gn * s * s)
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(expected, rel=1e-8)
    factor = 1.5 if expected < 0.25 else 2 / 3 if expected > 0.75 else 1.0
    assert opt.diagnostics["damping_next"] == pytest.approx(factor * lam)
    assert opt.global_state["damping"] == pytest.approx(factor * lam)


def test_fixed_damping_rule_keeps_lambda() -> None:
    model = Sin(1.4)
    opt = NewtonCG(model.parameters(), damping=1e-3, damping_rule="fixed")
    opt.step(_sin_closure(model))
    assert opt.diagnostics["damping_next"] == pytest.approx(1e-3)


class Quadratic1d(nn.Module):
    """f = (a/2) (w - 3)^2 as a least-squares output: the model is exact, rho = 1."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w - 3.0) * x


def test_trust_radius_doubles_on_a_good_boundary_step_and_shrinks_on_a_bad_one() -> None:
    model = Quadratic1d()
    closure = BatchClosure(model, nn.MSELoss(reduction="sum"), torch.ones(1, 1, dtype=torch.float64) * 0.5 ** 0.5,
                           torch.zeros(1, 1, dtype=torch.float64))
    opt = NewtonCG(model.parameters(), damping=0.0, globalization="trust_region", tr_radius=0.5)
    opt.step(closure)  # the Newton step (3) is outside the radius: boundary, rho = 1 -> radius x 2
    assert float(model.w) == pytest.approx(0.5)
    assert opt.diagnostics["radius"] == pytest.approx(1.0)
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(1.0)

    # (z - 2)^2 with a tall bump at z = 1.5: the boundary step from 0 lands on the bump
    ridge = Quadratic1d()
    bump = BatchClosure(ridge, lambda z, y: ((z + 3.0 - y) ** 2).sum() + 50 * torch.exp(-(((z + 3.0 - 1.5) / 0.1) ** 2)).sum(),
                        torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 2.0, dtype=torch.float64))
    opt = NewtonCG(ridge.parameters(), damping=0.0, globalization="trust_region", tr_radius=1.5)
    opt.step(bump)
    assert opt.diagnostics["reduction_ratio"] < 0.25 and opt.diagnostics["status"] == "rejected"
    assert opt.diagnostics["radius"] == pytest.approx(0.25 * 1.5)
    assert float(ridge.w) == 0.0
