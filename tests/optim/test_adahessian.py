"""AdaHessian against closed forms: the first step on a diagonal quadratic (exact), and on a NON-diagonal
quadratic, where only a true Rademacher probe gives the diagonal (a constant probe z = -1 gives row sums);
the spatial averaging of conv-kernel diagonals."""

from __future__ import annotations

import torch

from hpo2.optim import AdaHessian
from tests.problems import DenseProbeQuadratic, DiagonalQuadratic


def test_adahessian_first_step_uses_the_true_diagonal() -> None:
    problem = DenseProbeQuadratic()
    a, theta0 = problem.a, problem.theta.detach().clone()
    g = a @ theta0 - problem.b
    lr, wd, eps = 0.1, 0.01, 1e-4
    AdaHessian(problem.parameters(), lr=lr, weight_decay=wd, eps=eps, n_probes=2000).step(problem)
    expected = theta0 * (1 - lr * wd) - lr * g / (torch.diagonal(a).abs() + eps)
    row_sums = theta0 * (1 - lr * wd) - lr * g / (a.sum(1).abs() + eps)  # what z = -1 would give
    got = problem.theta.detach()
    torch.testing.assert_close(got, expected, rtol=0.05, atol=1e-4)
    assert not torch.allclose(got, row_sums, rtol=0.05, atol=1e-4)


def test_adahessian_first_step_matches_closed_form():
    problem = DiagonalQuadratic()
    theta0 = problem.theta.detach().clone()
    g = problem.a * theta0 - problem.b
    lr, wd, eps = 0.1, 0.01, 1e-4
    AdaHessian(problem.parameters(), lr=lr, weight_decay=wd, eps=eps).step(problem)
    # Bias-corrected m = g, v = a^2: theta - lr (g / (|a| + eps) + wd theta).
    expected = theta0 * (1 - lr * wd) - lr * g / (problem.a.abs() + eps)
    torch.testing.assert_close(problem.theta.detach(), expected, rtol=1e-12, atol=1e-14)


def test_adahessian_averages_conv_kernel_diagonals_spatially():
    from hpo2.optim.adahessian import spatial_average

    d = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    avg = spatial_average(d)
    torch.testing.assert_close(avg[1, 2], d[1, 2].abs().mean().expand(3, 3))
    flat = torch.randn(5, dtype=torch.float64)
    assert torch.equal(spatial_average(flat), flat)
