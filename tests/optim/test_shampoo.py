"""Shampoo against closed forms (SVD, dense Kronecker roots), blockwise
independence, eigh failure handling, and pytorch_optimizer's Shampoo."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from hpo2.optim import BatchClosure, Shampoo


class MatrixQuadratic(nn.Module):
    """f(W) = 1/2 tr((W - W*)^T A (W - W*) B): gradient A (W - W*) B, Hessian B (x) A."""

    def __init__(self, m: int = 4, n: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)

        def spd(k: int) -> torch.Tensor:
            x = torch.randn(k, k, dtype=torch.float64, generator=gen)
            return x @ x.T + 0.5 * torch.eye(k, dtype=torch.float64)

        self.register_buffer("a", spd(m))
        self.register_buffer("b", spd(n))
        self.register_buffer("target", torch.randn(m, n, dtype=torch.float64, generator=gen))
        self.w = nn.Parameter(torch.randn(m, n, dtype=torch.float64, generator=gen))

    def gradient(self) -> torch.Tensor:
        return self.a @ (self.w.detach() - self.target) @ self.b

    def forward(self) -> torch.Tensor:
        d = self.w - self.target
        return 0.5 * torch.trace(d.T @ self.a @ d @ self.b)


def test_first_step_is_the_orthogonal_factor_of_the_gradient():
    """With one gradient G = U S V^T, (G G^T)^{-1/4} G (G^T G)^{-1/4} = U V^T."""
    problem = MatrixQuadratic(4, 4)
    w0, g = problem.w.detach().clone(), problem.gradient()
    u, _, vt = torch.linalg.svd(g)
    lr = 0.1
    opt = Shampoo(problem.parameters(), lr=lr, beta1=0.0, beta2=1.0, grafting="none", eps=1e-30,
                  precondition_frequency=1, start_preconditioning_step=1)
    opt.step(problem)
    torch.testing.assert_close(problem.w.detach(), w0 - lr * u @ vt, rtol=1e-9, atol=1e-10)
    assert opt.diagnostics["preconditioned_fraction"] == 1.0 and opt.diagnostics["root_refreshes"] == 2


@pytest.mark.parametrize(("frequency", "refreshes"), [(2, (2, 4)), (3, (2, 5))])
def test_steps_match_the_dense_kronecker_inverse_root_with_ema_momentum_and_adam_grafting(frequency, refreshes):
    """Independent loop: vec(L^-1/4 M R^-1/4) = (R (x) L)^{-1/4} vec(M) with scipy's
    fractional matrix power of the dense Kronecker product; roots refreshed on the
    listed steps (start 2, every 2 or 3: the phase counts from the start step, not from
    step 0), stale in between; Adam before the start and for the norm."""
    problem = MatrixQuadratic(4, 3, seed=1)
    lr, b1, b2, gb2, eps, geps = 0.05, 0.5, 0.9, 0.99, 1e-6, 1e-8
    opt = Shampoo(problem.parameters(), lr=lr, beta1=b1, beta2=b2, adam_beta2=gb2, eps=eps, adam_eps=geps,
                  precondition_frequency=frequency, start_preconditioning_step=2)
    w = problem.w.detach().numpy().copy()
    a, b, target = problem.a.numpy(), problem.b.numpy(), problem.target.numpy()
    left, right, m, v = np.zeros((4, 4)), np.zeros((3, 3)), np.zeros((4, 3)), np.zeros((4, 3))
    root = None
    for t in range(1, 6):
        opt.step(problem)
        g = a @ (w - target) @ b
        left, right = b2 * left + (1 - b2) * g @ g.T, b2 * right + (1 - b2) * g.T @ g
        m, v = b1 * m + (1 - b1) * g, gb2 * v + (1 - gb2) * g * g
        m_hat = m / (1 - b1**t)
        adam = m_hat / (np.sqrt(v / (1 - gb2**t)) + geps)
        assert opt.diagnostics["root_refreshes"] == (2 if t in refreshes else 0)
        if t in refreshes:
            kron = np.kron(right / (1 - b2**t) + eps * np.eye(3), left / (1 - b2**t) + eps * np.eye(4))
            root = np.real(scipy.linalg.fractional_matrix_power(kron, -0.25))
        if root is None:
            step = adam
        else:
            shampoo = (root @ m_hat.reshape(-1, order="F")).reshape(4, 3, order="F")
            step = shampoo * np.linalg.norm(adam) / np.linalg.norm(shampoo)
        w = w - lr * step
        np.testing.assert_allclose(problem.w.detach().numpy(), w, rtol=1e-7, atol=1e-9)


def test_blocks_are_preconditioned_independently():
    """A separable loss: each block of a blocked 5x4 weight must move exactly as the
    same block would as a parameter of its own."""
    gen = torch.Generator().manual_seed(2)
    scale, target = (
        torch.rand(5, 4, dtype=torch.float64, generator=gen) + 0.5,
        torch.randn(5, 4, dtype=torch.float64, generator=gen),
    )
    w = nn.Parameter(torch.randn(5, 4, dtype=torch.float64, generator=gen))
    slices = [
        (slice(0, 3), slice(0, 3)),
        (slice(0, 3), slice(3, 4)),
        (slice(3, 5), slice(0, 3)),
        (slice(3, 5), slice(3, 4)),
    ]
    pieces = [nn.Parameter(w.detach()[r, c].clone()) for r, c in slices]
    settings = dict(lr=0.05, precondition_frequency=1, start_preconditioning_step=1, eps=1e-8)
    blocked = Shampoo([w], max_preconditioner_dim=3, **settings)
    separate = Shampoo(pieces, **settings)

    def whole() -> torch.Tensor:
        return 0.5 * ((scale * w - target) ** 4).sum()

    def parts() -> torch.Tensor:
        return sum(0.5 * ((scale[r, c] * p - target[r, c]) ** 4).sum() for p, (r, c) in zip(pieces, slices))

    for _ in range(4):
        blocked.step(whole)
        separate.step(parts)
    assert len(blocked.state[w]["blocks"]) == 4
    for p, (r, c) in zip(pieces, slices):
        torch.testing.assert_close(w.detach()[r, c], p.detach(), rtol=1e-10, atol=1e-12)


def test_a_failed_eigh_keeps_the_previous_root_and_is_counted(monkeypatch):
    problem = MatrixQuadratic(3, 3)
    opt = Shampoo(problem.parameters(), precondition_frequency=1, start_preconditioning_step=1)
    opt.step(problem)
    root = opt.state[problem.w]["blocks"][0]["left_root"].clone()

    def failing_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("eigh did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    opt.step(problem)
    assert opt.diagnostics["root_failures"] == 2 and opt.diagnostics["root_refreshes"] == 0
    assert torch.equal(opt.state[problem.w]["blocks"][0]["left_root"], root)
    assert torch.isfinite(problem.w).all()


def test_matches_pytorch_optimizer_shampoo_where_conventions_match():
    """pytorch_optimizer's Shampoo is Gupta et al.'s original: factors start at eps*I
    and sum G G^T (our beta2 = 1 with eps added at the root), roots every step, no
    grafting, no momentum; it preconditions biases with full-matrix AdaGrad where we
    use Adam, so the model has no biases."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.Tanh(), nn.Linear(7, 3, bias=False)).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss_fn = nn.CrossEntropyLoss()
    ours_model, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    ours = Shampoo(ours_model.parameters(), lr=0.1, beta1=0.0, beta2=1.0, grafting="none", eps=1e-4,
                   precondition_frequency=1, start_preconditioning_step=1)
    ref = pytorch_optimizer.Shampoo(ref_model.parameters(), lr=0.1, matrix_eps=1e-4)
    for _ in range(6):
        ours.step(BatchClosure(ours_model, loss_fn, x, y))
        ref.zero_grad()
        loss_fn(ref_model(x), y).backward()
        ref.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)


def test_a_torch_style_closure_that_calls_backward_gives_the_same_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    ours = Shampoo(model.parameters(), precondition_frequency=1, start_preconditioning_step=2)
    torch_style = Shampoo(twin.parameters(), precondition_frequency=1, start_preconditioning_step=2)

    def closure() -> torch.Tensor:
        torch_style.zero_grad()
        loss = nn.functional.mse_loss(twin(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        ours.step(BatchClosure(model, nn.MSELoss(), x, y))
        torch_style.step(closure)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
