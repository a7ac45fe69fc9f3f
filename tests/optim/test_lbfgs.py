"""L-BFGS against closed forms and torch.optim.LBFGS: n steps on an n-dim quadratic with an exact line search,
the same iterates as torch with a fixed step, torch-style closures, the Hessian-scaled first step."""

from __future__ import annotations

import pytest
import torch

from hpo2.optim import LBFGS
from tests.problems import Quadratic, logistic_problem


def test_lbfgs_with_exact_line_search_finishes_n_dim_quadratic_in_n_steps(seed):
    n = 10
    problem = Quadratic(n, seed, cond=50.0)
    opt = LBFGS(problem.parameters(), max_iter=n, history_size=n, line_search="strong_wolfe",
                ls_c1=1e-12, ls_c2=1e-9, max_eval=20 * n, tolerance_grad=0.0, tolerance_change=0.0)
    opt.step(problem)
    assert opt.diagnostics["inner_iters"] <= n
    torch.testing.assert_close(problem.theta.detach(), problem.minimizer(), rtol=1e-6, atol=1e-7)


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
