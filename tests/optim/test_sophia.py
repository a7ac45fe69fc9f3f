"""Sophia against closed forms: Hutchinson's diagonal on a diagonal quadratic (exact) and on a NON-diagonal
one (only a true Rademacher probe gives the diagonal), the GNB estimator against the dense GGN diagonal."""

from __future__ import annotations

import torch
from torch import nn

from hpo2.optim import BatchClosure, Sophia
from tests.problems import DenseProbeQuadratic, DiagonalQuadratic
from tests.reference import dense_ggn


def test_sophia_hutchinson_first_step_matches_closed_form():
    problem = DiagonalQuadratic()
    theta0 = problem.theta.detach().clone()
    g = problem.a * theta0 - problem.b
    lr, wd, rho, b1, b2 = 0.1, 0.1, 0.04, 0.965, 0.99
    Sophia(problem.parameters(), lr=lr, weight_decay=wd, rho=rho, estimator="hutchinson").step(problem)
    m, h = (1 - b1) * g, (1 - b2) * problem.a
    ratio = (m.abs() / (rho * h).clamp_min(1e-15)).clamp_max(1.0)
    expected = theta0 * (1 - lr * wd) - lr * m.sign() * ratio
    torch.testing.assert_close(problem.theta.detach(), expected, rtol=1e-12, atol=1e-14)


def test_sophia_hutchinson_first_step_uses_the_true_diagonal_unclipped() -> None:
    """A small gradient and rho = 1: |m| / (rho h) < 1 on every coordinate, so the
    step is m / (rho h) and depends on the curvature's scale."""
    problem = DenseProbeQuadratic(scale_b=0.02)
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
