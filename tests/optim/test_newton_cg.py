"""Newton-CG: diagnostics on a non-finite loss (issue 12)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpo2.optim import BatchClosure, NewtonCG
from tests.problems import Quadratic, Sin, logistic_problem, logistic_scipy_optimum


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
    return BatchClosure(
        model, nn.MSELoss(), torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    )


def test_gauss_newton_by_default_with_a_batch_closure_hessian_with_a_plain_one() -> None:
    model = Sin(1.4)
    opt = NewtonCG(model.parameters())
    opt.step(_sin_closure(model))
    assert opt.diagnostics["curvature"] == "ggn"
    opt.step(lambda: torch.sin(model.w * 1.0).pow(2).sum())
    assert opt.diagnostics["curvature"] == "hessian"


@pytest.mark.parametrize("globalization", ["armijo", "strong_wolfe", "none", "trust_region"])
def test_lm_damping_follows_the_closed_form_reduction_ratio(globalization: str) -> None:
    """f(w) = sin(w)^2, G = 2 cos(w)^2: rho = (f(w0 + s) - f(w0)) / (g s + G s^2 / 2)
    for the step s actually taken, against the undamped model under every globalization
    (the trust region's boundary step s = -1 included); lambda x 3/2 below 1/4, x 2/3 above 3/4."""
    lam, w0 = 1e-3, 1.4
    model = Sin(w0)
    opt = NewtonCG(
        model.parameters(), damping=lam, globalization=globalization, lr=0.5 if globalization == "none" else 1.0
    )
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
    assert float(model.w.detach()) == pytest.approx(0.5)
    assert opt.diagnostics["radius"] == pytest.approx(1.0)
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(1.0)

    # (z - 2)^2 with a tall bump at z = 1.5: the boundary step from 0 lands on the bump
    ridge = Quadratic1d()
    bump = BatchClosure(
        ridge,
        lambda z, y: ((z + 3.0 - y) ** 2).sum() + 50 * torch.exp(-(((z + 3.0 - 1.5) / 0.1) ** 2)).sum(),
        torch.ones(1, 1, dtype=torch.float64),
        torch.full((1, 1), 2.0, dtype=torch.float64),
    )
    opt = NewtonCG(ridge.parameters(), damping=0.0, globalization="trust_region", tr_radius=1.5)
    opt.step(bump)
    assert opt.diagnostics["reduction_ratio"] < 0.25 and opt.diagnostics["status"] == "rejected"
    assert opt.diagnostics["radius"] == pytest.approx(0.25 * 1.5)
    assert float(ridge.w.detach()) == 0.0


class IndefiniteQuadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=gen))
        self.register_buffer(
            "a", q @ torch.diag(torch.tensor([-2.0, -0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)) @ q.T
        )
        self.theta = nn.Parameter(torch.randn(6, dtype=torch.float64, generator=gen) * 0.1)

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta + 0.1 * (self.theta**4).sum()


@pytest.mark.parametrize("mode", ["truncate", "direction"])
def test_newton_cg_handles_negative_curvature_by_descending(mode):
    problem = IndefiniteQuadratic()
    opt = NewtonCG(problem.parameters(), damping=0.0, negative_curvature=mode)
    before = float(problem().detach())
    saw_negative = False
    for _ in range(20):
        opt.step(problem)
        saw_negative |= bool(opt.diagnostics.get("negative_curvature", 0))
    assert saw_negative
    assert float(problem().detach()) < before - 0.1  # left the saddle region at 0, not stuck on it


def test_steihaug_newton_cg_respects_radius_on_indefinite_problem():
    problem = IndefiniteQuadratic()
    opt = NewtonCG(problem.parameters(), damping=0.0, globalization="trust_region", tr_radius=0.05)
    theta0 = problem.theta.detach().clone()
    opt.step(problem)
    assert float((problem.theta.detach() - theta0).norm()) <= 0.05 * (1 + 1e-9)
    assert opt.diagnostics["cg_stop"] in ("negative_curvature", "trust_region_boundary")


@pytest.mark.parametrize("globalization", ["none", "armijo", "strong_wolfe", "trust_region"])
def test_newton_cg_without_damping_solves_quadratic_in_one_step(globalization, seed, device):
    problem = Quadratic(12, seed).to(device)
    opt = NewtonCG(problem.parameters(), damping=0.0, cg_max_iter=50, cg_tol=1e-12,
                   globalization=globalization, tr_radius=1e6)
    opt.step(problem)
    torch.testing.assert_close(problem.theta.detach(), problem.minimizer(), rtol=1e-8, atol=1e-9)
    assert opt.diagnostics["status"] == "ok"
    assert opt.diagnostics["cg_stop"] == "residual_tol"
    assert opt.diagnostics["n_hvp"] >= 1


def test_newton_cg_reaches_scipy_trust_ncg_optimum_on_logistic_regression():
    x_ref, f_ref = logistic_scipy_optimum()
    for globalization in ("armijo", "trust_region"):
        model, closure = logistic_problem()
        opt = NewtonCG(model.parameters(), damping=0.0, globalization=globalization, curvature="hessian")
        for _ in range(30):
            opt.step(closure)
            if opt.diagnostics["status"] == "converged":
                break
        got = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).numpy()
        assert abs(got - x_ref).max() < 1e-6, globalization
        assert float(closure().detach()) == pytest.approx(f_ref, abs=1e-12)


@pytest.mark.parametrize("g_norm", [1e-2, 1e-4])
def test_cg_forcing_term_tightens_with_the_gradient_norm(g_norm: float) -> None:
    """Near the minimum the forcing term is sqrt(||g||) < cg_tol (N&W Thm. 7.2): on a quadratic
    with C exact, the new gradient is CG's residual, so it is at most sqrt(||g||) ||g||, not the
    cap cg_tol ||g||."""
    model = Quadratic(40, seed=5, cond=1e4)
    gen = torch.Generator().manual_seed(6)
    offset = torch.randn(40, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        direction = torch.linalg.solve(model.a, offset)  # theta - theta* with gradient A (theta - theta*) = offset
        model.theta.copy_(model.minimizer() + direction * g_norm / offset.norm())
    opt = NewtonCG(model.parameters(), damping=0.0, globalization="none", cg_tol=0.5, cg_max_iter=200)
    opt.step(model)
    assert opt.diagnostics["grad_norm"] == pytest.approx(g_norm)
    new_g = model.a @ model.theta.detach() - model.b
    assert opt.diagnostics["cg_stop"] == "residual_tol"
    assert float(new_g.norm()) <= g_norm**0.5 * g_norm
