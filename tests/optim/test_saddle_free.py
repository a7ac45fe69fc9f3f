"""Low-rank saddle-free Newton: escapes the saddle of x^2 - y^2 that Newton's step
lands on, equals Newton's step on a convex quadratic with k = n, and matches a
dense eigendecomposition |H| step with k < n on an indefinite quadratic."""

from __future__ import annotations

import torch
from torch import nn

from hpo2.optim import SaddleFreeNewton
from hpo2.optim.costs import CostMeter


class Saddle(nn.Module):
    """f(x, y) = x^2 - y^2: a saddle at the origin, H = diag(2, -2)."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([0.5, 1e-3], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.theta[0] ** 2 - self.theta[1] ** 2


class Quadratic(nn.Module):
    """f = 1/2 theta^T A theta - b^T theta with A = Q diag(eigenvalues) Q^T."""

    def __init__(self, eigenvalues: list[float], seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
        self.register_buffer("a", q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
        self.register_buffer("b", torch.randn(n, dtype=torch.float64, generator=gen))
        self.theta = nn.Parameter(torch.randn(n, dtype=torch.float64, generator=gen))

    def gradient(self) -> torch.Tensor:
        return self.a @ self.theta.detach() - self.b

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta - self.b @ self.theta


def test_escapes_the_saddle_that_the_exact_newton_step_converges_to():
    newton = Saddle().theta.detach().clone()
    hessian = torch.diag(torch.tensor([2.0, -2.0], dtype=torch.float64))
    newton = newton - torch.linalg.solve(hessian, torch.stack([2 * newton[0], -2 * newton[1]]))
    assert torch.allclose(newton, torch.zeros(2, dtype=torch.float64))  # Newton jumps onto the saddle

    problem = Saddle()
    opt = SaddleFreeNewton(problem.parameters(), rank=2, damping=0.0, refresh_every=1)
    for _ in range(6):
        opt.step(problem)
    assert opt.diagnostics["negative_eigenvalues"] == 1
    # |H| = 2I: x -> 0 in one step and y doubles every step (moves down the -y^2 side).
    torch.testing.assert_close(problem.theta.detach(), torch.tensor([0.0, 1e-3 * 2**6], dtype=torch.float64))
    assert float(problem().detach()) < -4e-3


def test_full_rank_on_a_convex_quadratic_is_the_newton_step():
    problem = Quadratic([0.3, 1.0, 2.0, 5.0, 9.0, 20.0])
    theta0, g = problem.theta.detach().clone(), problem.gradient()
    opt = SaddleFreeNewton(problem.parameters(), rank=6, lanczos_iter=6, damping=0.0)
    opt.step(problem)
    torch.testing.assert_close(problem.theta.detach(), theta0 - torch.linalg.solve(problem.a, g), rtol=1e-8, atol=1e-10)
    assert opt.diagnostics["n_hvp"] == 6 and opt.diagnostics["refreshed"] == 1


def test_low_rank_step_uses_the_largest_absolute_eigenvalues_and_a_gradient_step_elsewhere():
    problem = Quadratic([-7.0, -0.5, 0.2, 1.0, 3.0, 5.0], seed=1)
    theta0, g = problem.theta.detach().clone(), problem.gradient()
    lr, damping = 0.1, 0.3
    opt = SaddleFreeNewton(problem.parameters(), rank=2, lanczos_iter=6, damping=damping, lr=lr)
    opt.step(problem)
    values, vectors = torch.linalg.eigh(problem.a)
    top = torch.argsort(values.abs(), descending=True)[:2]  # -7 and 5
    v, lam = vectors[:, top], values[top]
    inside = v @ ((v.T @ g) / (lam.abs() + damping))
    expected = theta0 - inside - lr * (g - v @ (v.T @ g))
    torch.testing.assert_close(problem.theta.detach(), expected, rtol=1e-8, atol=1e-10)


def test_pairs_are_reused_between_refreshes_at_the_cost_of_one_gradient():
    problem = Quadratic([1.0, 2.0, 3.0])
    opt = SaddleFreeNewton(problem.parameters(), rank=2, lanczos_iter=3, refresh_every=3)
    opt.costs = CostMeter(calibrate=False)  # nominal prices: a gradient, and a product each
    costs = []
    for _ in range(4):
        opt.step(problem)
        costs.append((opt.diagnostics["refreshed"], opt.diagnostics["grad_equivalents"]))
    assert costs == [(1, 4), (0, 1), (0, 1), (1, 4)]
