"""SOAP against an independent NumPy loop (Adam in the eigenbasis of the Shampoo
factors) and against pytorch_optimizer's SOAP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hpo2.optim import SOAP, BatchClosure


def _eigenbasis(factor: np.ndarray) -> np.ndarray:
    return np.linalg.eigh(factor)[1][:, ::-1]


def test_precondition_frequency_one_is_adam_in_the_eigenbasis_of_the_factors():
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(40, 5, dtype=torch.float64, generator=gen),
        torch.randn(40, 4, dtype=torch.float64, generator=gen),
    )
    model = nn.Linear(5, 4, bias=False).double()
    w = model.weight.detach().numpy().copy()
    lr, b1, b2, sb, eps, wd = 0.02, 0.9, 0.95, 0.8, 1e-8, 0.01
    opt = SOAP(model.parameters(), lr=lr, beta1=b1, beta2=b2, shampoo_beta=sb, eps=eps, weight_decay=wd,
               precondition_frequency=1, eigenbasis="eigh")
    xn, yn = x.numpy(), y.numpy()
    left, right, m, v = np.zeros((4, 4)), np.zeros((5, 5)), np.zeros((4, 5)), np.zeros((4, 5))
    ql = qr = None
    for call in range(6):
        opt.step(BatchClosure(model, nn.MSELoss(), x, y))
        g = 2 * (xn @ w.T - yn).T @ xn / yn.size
        if call > 0:  # the first call only initialises the factors and bases
            t = call
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * (ql.T @ g @ qr) ** 2
            adam_in_basis = (ql.T @ m @ qr) / (np.sqrt(v) + eps)
            w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * (ql @ adam_in_basis @ qr.T)
            w = w * (1 - lr * wd)
        left, right = sb * left + (1 - sb) * g @ g.T, sb * right + (1 - sb) * g.T @ g
        ql, qr = _eigenbasis(left), _eigenbasis(right)
        np.testing.assert_allclose(model.weight.detach().numpy(), w, rtol=1e-7, atol=1e-9)
    assert opt.diagnostics["basis_refreshes"] == 2


def test_one_dimensional_parameters_run_adam():
    """A bias has no eigenbasis: SOAP steps it as Adam (after the initialising call).
    SOAP adds eps to the uncorrected sqrt(v) (the authors' code), torch.optim.Adam to
    the bias-corrected one, so eps is negligible here."""
    bias = nn.Parameter(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    ref = nn.Parameter(bias.detach().clone())
    opt = SOAP([bias], lr=0.01, weight_decay=0.0, eps=1e-30)
    adam = torch.optim.Adam([ref], lr=0.01, betas=(0.95, 0.95), eps=1e-30)
    opt.step(lambda: (bias**3).sum())
    for _ in range(4):
        opt.step(lambda: (bias**3).sum())
        adam.zero_grad()
        (ref**3).sum().backward()
        adam.step()
    torch.testing.assert_close(bias.detach(), ref.detach(), rtol=1e-12, atol=1e-14)


def test_matches_pytorch_optimizer_soap_with_the_power_iteration_basis():
    """Same algorithm (first call initialises; QR power iteration every 2 steps, V
    permuted by the estimated eigenvalues).  pytorch_optimizer runs the QR in float32,
    so the runs agree to ~1e-5 relative; eps = 1e-4 because with 1e-8 the rank-deficient
    first factors turn float32 round-off in their null space into O(1) differences."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 4, (64,))
    loss_fn = nn.CrossEntropyLoss()
    ours_model, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    ours = SOAP(ours_model.parameters(), lr=0.01, precondition_frequency=2, eps=1e-4)
    ref = pytorch_optimizer.SOAP(ref_model.parameters(), lr=0.01, precondition_frequency=2, eps=1e-4)
    for _ in range(8):
        ours.step(BatchClosure(ours_model, loss_fn, x, y))
        ref.zero_grad()
        loss_fn(ref_model(x), y).backward()
        ref.step()
    for start, a, b in zip(model.parameters(), ours_model.parameters(), ref_model.parameters()):
        moved = float((b - start).detach().abs().max())
        assert float((a - b).detach().abs().max()) <= 1e-4 * moved
