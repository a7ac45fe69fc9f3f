"""AdaHessian and Sophia on a NON-diagonal quadratic, so that only a true
Rademacher probe gives the diagonal (a constant probe z = -1 gives row sums), and
Sophia steps where the curvature, not the clip, sets the step (issue 12)."""

from __future__ import annotations

import torch
from torch import nn

from hpo2.optim import AdaHessian, BatchClosure, Sophia
from tests.reference import dense_ggn


class Quadratic(nn.Module):
    """f = theta^T A theta / 2 - b^T theta with a dense SPD A (rows sum far from the diagonal)."""

    def __init__(self, scale_b: float = 1.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        m = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        self.register_buffer("a", m @ m.T + torch.diag(torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)))
        self.register_buffer("b", scale_b * torch.randn(5, generator=gen, dtype=torch.float64))
        self.theta = nn.Parameter(0.1 * torch.randn(5, generator=gen, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta - self.b @ self.theta


def test_adahessian_first_step_uses_the_true_diagonal() -> None:
    problem = Quadratic()
    a, theta0 = problem.a, problem.theta.detach().clone()
    g = a @ theta0 - problem.b
    lr, wd, eps = 0.1, 0.01, 1e-4
    AdaHessian(problem.parameters(), lr=lr, weight_decay=wd, eps=eps, n_probes=2000).step(problem)
    expected = theta0 * (1 - lr * wd) - lr * g / (torch.diagonal(a).abs() + eps)
    row_sums = theta0 * (1 - lr * wd) - lr * g / (a.sum(1).abs() + eps)  # what z = -1 would give
    got = problem.theta.detach()
    torch.testing.assert_close(got, expected, rtol=0.05, atol=1e-4)
    assert not torch.allclose(got, row_sums, rtol=0.05, atol=1e-4)


def test_sophia_hutchinson_first_step_uses_the_true_diagonal_unclipped() -> None:
    """A small gradient and rho = 1: |m| / (rho h) < 1 on every coordinate, so the
    step is m / (rho h) and depends on the curvature's scale."""
    problem = Quadratic(scale_b=0.02)
    with torch.no_grad():
        problem.theta.mul_(0.02)
    a, theta0 = problem.a, problem.theta.detach().clone()
    g = a @ theta0 - problem.b
    lr, rho, b1, b2 = 0.1, 1.0, 0.965, 0.99
    opt = Sophia(problem.parameters(), lr=lr, weight_decay=0.0, rho=rho, estimator="hutchinson", n_probes=2000)
    opt.step(problem)
    m, h = (1 - b1) * g, (1 - b2) * torch.diagonal(a)
    ratio = m.abs() / (rho * h)
    assert torch.all(ratio < 0.9) and opt.diagnostics["clip_fraction"] == 0
    expected = theta0 - lr * m.sign() * ratio
    torch.testing.assert_close(problem.theta.detach(), expected, rtol=0.15, atol=1e-6)
    row_sums = theta0 - lr * m.sign() * (m.abs() / (rho * (1 - b2) * a.sum(1).abs())).clamp_max(1.0)  # z = -1
    assert not torch.allclose(problem.theta.detach(), row_sums, rtol=0.15, atol=1e-6)


def test_sophia_gnb_step_follows_the_ggn_diagonal_for_a_sum_reduced_loss() -> None:
    """Sophia-G with a sum-reduced loss: the step uses diag(J^T H J) of that loss
    (a mean-only estimator would be N times too small and clip every coordinate)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 3).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))])
    diag = torch.diagonal(dense_ggn(model, loss_fn, x, y))
    lr, rho, b1, b2 = 1e-3, 50.0, 0.965, 0.99
    opt = Sophia(model.parameters(), lr=lr, weight_decay=0.0, rho=rho, n_probes=1000)
    opt.step(BatchClosure(model, loss_fn, x, y))
    m, h = (1 - b1) * g, (1 - b2) * diag
    ratio = (m.abs() / (rho * h)).clamp_max(1.0)
    assert float((ratio < 0.9).float().mean()) > 0.5  # most coordinates are set by the curvature
    expected = theta0 - lr * m.sign() * ratio
    got = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close((got - theta0) / lr, (expected - theta0) / lr, rtol=0.15, atol=2e-2)
