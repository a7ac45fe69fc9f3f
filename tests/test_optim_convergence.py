"""Optimizers against closed forms (quadratics, least squares), SciPy's trust-ncg,
and torch.optim.LBFGS."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo2.optim import LBFGS, AdaHessian, BatchClosure, HessianFree, NewtonCG, Sophia
from tests.problems import (
    L2,
    Quadratic,
    RosenbrockResiduals,
    logistic_problem,
    logistic_scipy_optimum,
    rosenbrock_closure,
)


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


def test_hessian_free_without_damping_solves_least_squares_in_one_step(seed, device):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 6, dtype=torch.float64, generator=gen)
    y = torch.randn(40, 2, dtype=torch.float64, generator=gen)
    model = nn.Linear(6, 2, bias=False).double()
    x, y, model = x.to(device), y.to(device), model.to(device)
    opt = HessianFree(model.parameters(), damping=0.0, martens_eps=1e-12, cg_max_iter=200, curvature_fraction=1.0)
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    expected = torch.linalg.lstsq(x, y).solution.T
    torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-7, atol=1e-9)
    # On a quadratic the model is exact: reduction ratio 1, so LM damping drops (0 stays 0).
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_lbfgs_with_exact_line_search_finishes_n_dim_quadratic_in_n_steps(seed):
    n = 10
    problem = Quadratic(n, seed, cond=50.0)
    opt = LBFGS(problem.parameters(), max_iter=n, history_size=n, line_search="strong_wolfe",
                ls_c1=1e-12, ls_c2=1e-9, max_eval=20 * n, tolerance_grad=0.0, tolerance_change=0.0)
    opt.step(problem)
    assert opt.diagnostics["inner_iters"] <= n
    torch.testing.assert_close(problem.theta.detach(), problem.minimizer(), rtol=1e-6, atol=1e-7)


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
        assert float(closure()) == pytest.approx(f_ref, abs=1e-12)


@pytest.mark.parametrize(
    "make_opt,steps",
    [
        (lambda p: LBFGS(p, history_size=10), 10),
        (lambda p: HessianFree(p, damping=1e-2), 30),
        # The L2 term is outside the outputs, so the GGN misses its curvature L2 * I:
        # damping = L2 puts it back and makes (G + damping I) the exact Hessian.
        (lambda p: NewtonCG(p, curvature="ggn", damping=L2), 30),
        (lambda p: AdaHessian(p, lr=0.5, weight_decay=0.0), 600),
        (lambda p: Sophia(p, lr=0.05, weight_decay=0.0, rho=0.05, estimator="gnb", hessian_refresh=1), 600),
        (lambda p: Sophia(p, lr=0.05, weight_decay=0.0, rho=0.05, estimator="hutchinson", hessian_refresh=2), 600),
    ],
    ids=["lbfgs", "hessian_free", "newton_cg_ggn", "adahessian", "sophia_gnb", "sophia_hutchinson"],
)
def test_each_optimizer_converges_on_logistic_regression(make_opt, steps):
    _, f_ref = logistic_scipy_optimum()
    model, closure = logistic_problem()
    opt = make_opt(model.parameters())
    for _ in range(steps):
        opt.step(closure)
    gap = float(closure()) - f_ref
    tolerance = 1e-8 if isinstance(opt, LBFGS | HessianFree | NewtonCG) else 2e-3
    assert 0 <= gap + 1e-12 and gap < tolerance


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: NewtonCG(p, damping=0.0, negative_curvature="direction"),
        lambda p: NewtonCG(p, damping=0.0, globalization="trust_region"),
        lambda p: LBFGS(p, history_size=10),
        lambda p: HessianFree(p, damping=1.0),
    ],
    ids=["newton_cg", "newton_cg_trust_region", "lbfgs", "hessian_free"],
)
def test_rosenbrock_converges_to_one_one(make_opt):
    model = RosenbrockResiduals()
    closure = rosenbrock_closure(model)
    opt = make_opt(model.parameters())
    for _ in range(200):
        opt.step(closure)
        if float(closure()) < 1e-20:
            break
    torch.testing.assert_close(model.xy.detach(), torch.ones(2, dtype=torch.float64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("max_iter,history", [(1, 5), (4, 3), (20, 100)])
def test_lbfgs_iterates_equal_torch_lbfgs_with_fixed_step(max_iter, history):
    model_ref, closure_ref = logistic_problem()
    model, closure = logistic_problem()
    ref = torch.optim.LBFGS(model_ref.parameters(), lr=0.8, max_iter=max_iter, history_size=history)
    ours = LBFGS(model.parameters(), lr=0.8, max_iter=max_iter, history_size=history, line_search="none")

    def torch_closure():
        ref.zero_grad()
        loss = closure_ref()
        loss.backward()
        return loss

    for _ in range(8):
        ref.step(torch_closure)
        ours.step(closure)
        for a, b in zip(model.parameters(), model_ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_lbfgs_accepts_torch_style_closures_and_matches_strong_wolfe_optimum():
    model_ref, closure_ref = logistic_problem()
    model, closure = logistic_problem()
    ref = torch.optim.LBFGS(model_ref.parameters(), line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=0.0, max_iter=200)
    ours = LBFGS(model.parameters(), tolerance_grad=1e-12, tolerance_change=0.0, max_iter=200)

    def backward_closure(opt, c):
        def run():
            opt.zero_grad()
            loss = c()
            loss.backward()
            return loss
        return run

    ref.step(backward_closure(ref, closure_ref))
    ours.step(backward_closure(ours, closure))  # torch-style closure calling backward() works too
    for a, b in zip(model.parameters(), model_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_lbfgs_hvp_scaling_takes_the_exact_cauchy_step_then_converges(seed):
    problem = Quadratic(8, seed, cond=1e3)
    theta0 = problem.theta.detach().clone()
    g0 = problem.a @ theta0 - problem.b
    opt = LBFGS(problem.parameters(), initial_scaling="hvp", line_search="none", max_iter=1, history_size=8)
    opt.step(problem)
    # First step: theta0 - (g^T g / g^T A g) g, the exact minimiser along -g.
    cauchy = theta0 - (g0 @ g0) / (g0 @ problem.a @ g0) * g0
    torch.testing.assert_close(problem.theta.detach(), cauchy, rtol=1e-10, atol=1e-12)
    assert opt.diagnostics["n_hvp"] == 1
    opt = LBFGS(problem.parameters(), initial_scaling="hvp", history_size=8, max_iter=200, max_eval=400,
                tolerance_change=0.0, tolerance_grad=1e-10)
    opt.step(problem)
    torch.testing.assert_close(problem.theta.detach(), problem.minimizer(), rtol=1e-6, atol=1e-6)
