"""Spectrum tools against torch.linalg.eigvalsh of dense Hessians."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo2.curvature import HessianOperator, MatrixOperator, hutchinson_trace, lanczos, spectral_density, top_eigenvalues
from tests.conftest import make_mlp
from tests.reference import dense_hessian


def _mlp_hessian(seed: int):
    model = make_mlp(seed, sizes=(4, 6, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(loss_fn(model(x), y), model.parameters())
    return op, dense_hessian(model, loss_fn, x, y)


def _matrix_with_spectrum(eigs: torch.Tensor, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(len(eigs), len(eigs), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    return q @ torch.diag(eigs) @ q.T


def test_lanczos_top_eigenvalues_match_eigvalsh(seed):
    op, h = _mlp_hessian(seed)
    exact = torch.linalg.eigvalsh(h).flip(0)
    full = top_eigenvalues(op, k=5, n_iter=op.dim, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(full.eigenvalues, exact[:5], rtol=1e-8, atol=1e-10)
    # Ritz vectors are eigenvectors: H u = lambda u.
    for lam, u in zip(full.eigenvalues, full.eigenvectors):
        torch.testing.assert_close(h @ u, lam * u, rtol=1e-6, atol=1e-8)
    short = top_eigenvalues(op, k=1, n_iter=25, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(short.eigenvalues[0], exact[0], rtol=1e-6, atol=1e-10)


def test_power_iteration_finds_dominant_eigenvalues(seed):
    eigs = torch.tensor([10.0, 6.0, 3.0] + [0.5] * 27, dtype=torch.float64)
    a = _matrix_with_spectrum(eigs, seed)
    res = top_eigenvalues(MatrixOperator(a), k=3, method="power", n_iter=500, tol=1e-12,
                          generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(res.eigenvalues, eigs[:3], rtol=1e-6, atol=1e-8)


def test_hutchinson_trace_matches_dense_trace(seed):
    op, h = _mlp_hessian(seed)
    est = hutchinson_trace(op, n_probes=3000, generator=torch.Generator().manual_seed(seed))
    exact = float(torch.trace(h))
    # Var[z^T H z] = 2 sum_{i != j} H_ij^2 for Rademacher z: allow 4 standard errors.
    off = h - torch.diag(torch.diagonal(h))
    stderr = float((2 * (off**2).sum() / 3000) ** 0.5)
    assert abs(est - exact) <= 4 * stderr + 1e-12


def test_spectral_density_is_a_quadrature_of_the_spectrum(seed):
    eigs = torch.cat([torch.linspace(-1.0, 1.0, 40), torch.tensor([5.0, 8.0])]).double()
    a = _matrix_with_spectrum(eigs, seed)
    op = MatrixOperator(a)
    # With as many Lanczos steps as dimensions the nodes are the eigenvalues.
    tri = lanczos(op, torch.ones(42, dtype=torch.float64), n_iter=42)
    torch.testing.assert_close(tri.eigh()[0], eigs.sort().values, rtol=1e-8, atol=1e-8)
    sld = spectral_density(op, n_iter=20, n_runs=20, generator=torch.Generator().manual_seed(seed))
    dx = float(sld.grid[1] - sld.grid[0])
    assert abs(float(sld.density.sum()) * dx - 1.0) < 1e-3
    assert all(abs(float(w.sum()) - 1.0) < 1e-10 for w in sld.weights)
    # The quadrature's first moment estimates tr(A)/n; 20 runs keep it close.
    assert abs(sld.trace_estimate(42) - float(eigs.sum())) < 0.25 * float(eigs.abs().sum())
    # The two outliers appear as nodes.
    nodes = torch.cat(sld.nodes)
    assert (nodes - 8.0).abs().min() < 1e-6 and (nodes - 5.0).abs().min() < 1e-6


def test_spectrum_rejects_bad_settings():
    op = MatrixOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="allowed: lanczos, power"):
        top_eigenvalues(op, method="arnoldi")
    with pytest.raises(ValueError, match="k=4"):
        top_eigenvalues(op, k=4)
    with pytest.raises(ValueError, match="square"):
        MatrixOperator(torch.zeros(2, 3))
