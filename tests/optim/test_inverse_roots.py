"""Checked eigendecompositions and inverse roots against float64 references: the
float32 path's accuracy, its float64 retry on failure and on inaccuracy, and the
staleness of Shampoo's roots and K-FAC's inverses between refreshes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo2.optim import KFAC, BatchClosure, Shampoo
from hpo2.optim.inverse_roots import checked_eigh, damped_inverse, inverse_root

EIGH = torch.linalg.eigh


def _spd(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2 * n, dtype=torch.float64, generator=gen)
    return (x @ x.T / (2 * n) + 0.1 * torch.eye(n, dtype=torch.float64)).to(dtype)


def _reference_root(matrix: torch.Tensor, exponent: float, eps: float) -> torch.Tensor:
    values, vectors = EIGH(matrix.double())
    return (vectors * (values + eps).pow(-1 / exponent)) @ vectors.T


def test_a_float32_root_matches_the_float64_reference():
    matrix = _spd(60)
    root, condition, retried = inverse_root(matrix, 4.0, 1e-6, "factor")  # type: ignore[misc]
    assert root.dtype == torch.float32 and not retried
    torch.testing.assert_close(root.double(), _reference_root(matrix, 4.0, 1e-6), rtol=2e-5, atol=2e-6)
    values = torch.linalg.eigvalsh(matrix.double())
    assert condition == pytest.approx(float((values[-1] + 1e-6) / (values[0] + 1e-6)), rel=1e-4)


def test_a_failed_float32_eigh_is_retried_in_float64(monkeypatch):
    calls: list[torch.dtype] = []

    def float32_fails(matrix: torch.Tensor):
        calls.append(matrix.dtype)
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("eigh did not converge")
        return EIGH(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", float32_fails)
    matrix = _spd(30)
    root, _, retried = inverse_root(matrix, 4.0, 1e-6, "factor")  # type: ignore[misc]
    assert retried and calls == [torch.float32, torch.float64]
    torch.testing.assert_close(root.double(), _reference_root(matrix, 4.0, 1e-6).float().double())


def test_an_inaccurate_float32_eigh_is_retried_in_float64(monkeypatch):
    """Eigenvectors off by 1e-3 (ten thousand float32 round-offs) fail the probe check."""

    def float32_inaccurate(matrix: torch.Tensor):
        values, vectors = EIGH(matrix)
        if matrix.dtype == torch.float32:
            gen = torch.Generator().manual_seed(1)
            vectors = vectors + 1e-3 * torch.randn(vectors.shape, generator=gen)
        return values, vectors

    monkeypatch.setattr(torch.linalg, "eigh", float32_inaccurate)
    matrix = _spd(30)
    values, vectors, retried = checked_eigh(matrix)  # type: ignore[misc]
    assert retried and values.dtype == torch.float64
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, matrix.double(), rtol=1e-6, atol=1e-6)


def test_float64_precision_never_decomposes_in_float32_and_non_finite_gives_none(monkeypatch):
    calls: list[torch.dtype] = []

    def recording(matrix: torch.Tensor):
        calls.append(matrix.dtype)
        return EIGH(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", recording)
    matrix = _spd(10)
    root, _, retried = inverse_root(matrix, 2.0, 0.0, "float64")  # type: ignore[misc]
    assert calls == [torch.float64] and not retried
    torch.testing.assert_close(root.double(), _reference_root(matrix, 2.0, 0.0).float().double())
    matrix[0, 0] = float("nan")
    assert inverse_root(matrix, 4.0, 1e-6, "factor") is None and calls == [torch.float64]


def test_damped_inverse_is_the_inverse_of_the_shifted_factor():
    matrix = _spd(20, torch.float64)
    values, vectors = EIGH(matrix)
    expected = torch.linalg.inv(matrix + 0.3 * torch.eye(20, dtype=torch.float64))
    torch.testing.assert_close(damped_inverse(values, vectors, 0.3), expected, rtol=1e-10, atol=1e-12)


def test_shampoo_decomposes_in_the_factor_dtype_or_in_float64_as_set(monkeypatch):
    calls: list[torch.dtype] = []

    def recording(matrix: torch.Tensor):
        calls.append(matrix.dtype)
        return EIGH(matrix)

    monkeypatch.setattr(torch.linalg, "eigh", recording)
    for precision, expected in (("factor", torch.float32), ("float64", torch.float64)):
        calls.clear()
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(5, 4))
        opt = Shampoo([w], precondition_frequency=1, start_preconditioning_step=1, eigh_precision=precision)
        opt.step(lambda: (w**4).sum())  # noqa: B023  # w is this iteration's
        assert calls == [expected, expected] and opt.diagnostics["root_retries"] == 0


def test_shampoo_reuses_its_roots_unchanged_until_the_refresh_step():
    """Start 2, every 3 steps: roots computed on steps 2 and 5, the same tensors' values on 3 and 4."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = Shampoo([w], precondition_frequency=3, start_preconditioning_step=2)
    roots, refreshes = [], []
    for _ in range(5):
        opt.step(lambda: ((w - 1.0) ** 4).sum())
        roots.append(opt.state[w]["blocks"][0]["left_root"])
        refreshes.append(opt.diagnostics["root_refreshes"])
    assert refreshes == [0, 2, 0, 0, 2] and roots[0] is None
    assert torch.equal(roots[1], roots[2]) and torch.equal(roots[1], roots[3])
    assert not torch.allclose(roots[3], roots[4])


def test_kfac_reuses_its_inverses_unchanged_until_the_refresh_step():
    """Factors move every step; the damped inverses only on steps 1 and 4 (every 3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    opt = KFAC(model.parameters(), cov_update_every=1, inverse_update_every=3)
    weight = model[2].weight  # its input A moves with the first layer
    inverses, factors = [], []
    for _ in range(4):
        opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
        inverses.append(opt.state[weight]["inverse_A"].clone())
        factors.append(opt.state[weight]["A"].clone())
    assert not torch.allclose(factors[0], factors[2])
    assert torch.equal(inverses[0], inverses[1]) and torch.equal(inverses[0], inverses[2])
    assert not torch.allclose(inverses[2], inverses[3])
