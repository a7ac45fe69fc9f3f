"""CG and Steihaug (hpo2.solvers.cg) against closed forms and torch.linalg."""

from __future__ import annotations

import math

import pytest
import torch

from hpo2.solvers import DEFAULT_CHECK_EVERY, backtrack_schedule, cg, steihaug_cg


def _spd(n: int, cond: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    eigs = torch.logspace(0, math.log10(cond), n, dtype=torch.float64)
    return q @ torch.diag(eigs) @ q.T


def _rhs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 500))


def test_cg_solves_spd_system_to_tolerance(seed):
    a, b = _spd(60, 1e3, seed), _rhs(60, seed)
    res = cg(lambda v: a @ v, b, max_iter=500, tol=1e-10)
    assert res.stop_reason == "residual_tol"
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b), rtol=1e-7, atol=1e-9)
    assert res.residual_norm <= 1e-10 * float(b.norm()) * 1.0001
    assert res.n_products == res.n_iter  # on the CPU the rules are read after every iteration
    # read every 5 iterations (an accelerator's default): the same solve, up to 4 products late, all counted
    late = cg(lambda v: a @ v, b, max_iter=500, tol=1e-10, check_every=DEFAULT_CHECK_EVERY)
    assert late.n_iter == res.n_iter and torch.equal(late.x, res.x)
    assert res.n_iter <= late.n_products < res.n_iter + DEFAULT_CHECK_EVERY
    # phi read off the residual equals 1/2 x^T A x - b^T x computed directly.
    assert res.quad_value == pytest.approx(float(0.5 * res.x @ a @ res.x - b @ res.x), rel=1e-9)


def test_diagonal_preconditioner_cuts_iterations(seed):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, 4, 80, dtype=torch.float64)
    a = torch.diag(scales) + 0.1 * _spd(80, 10, seed)  # badly scaled, diagonally dominant
    b = torch.randn(80, dtype=torch.float64, generator=gen)
    plain = cg(lambda v: a @ v, b, max_iter=1000, tol=1e-8)
    pre = cg(lambda v: a @ v, b, max_iter=1000, tol=1e-8, preconditioner=torch.diagonal(a).clone())
    torch.testing.assert_close(pre.x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-10)
    assert pre.n_iter < plain.n_iter / 2


def test_cg_reports_negative_curvature_on_indefinite_system(seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=gen))
    a = q @ torch.diag(torch.linspace(-2.0, 5.0, 30, dtype=torch.float64)) @ q.T
    res = cg(lambda v: a @ v, _rhs(30, seed), max_iter=100)
    assert res.stop_reason == "negative_curvature"
    p = res.negative_curvature
    assert p is not None and float(p @ a @ p) <= 0
    assert res.curvature == pytest.approx(float(p @ a @ p / (p @ p)))


def test_martens_rule_stops_early_and_quadratic_decreases(seed):
    a, b = _spd(200, 1e6, seed), _rhs(200, seed)
    full = cg(lambda v: a @ v, b, max_iter=200, tol=0.0)
    early = cg(lambda v: a @ v, b, max_iter=200, tol=0.0, martens_eps=5e-3, store_iterates=True)
    assert early.stop_reason == "relative_progress"
    assert early.n_iter < full.n_iter
    # The stopping rule fired because the last k iterations improved phi by < k*eps relatively.
    assert early.quad_value < 0
    # Stored iterates follow ceil(1.3^j) and end with the last one; phi decreases along them.
    stored = [i for i, _ in early.iterates]
    assert stored[:-1] == sorted(i for i in backtrack_schedule(200) if i <= early.n_iter)[: len(stored) - 1]
    assert stored[-1] == early.n_iter
    phis = [float(0.5 * x @ a @ x - b @ x) for _, x in early.iterates]
    assert all(p1 >= p2 - 1e-9 for p1, p2 in zip(phis, phis[1:]))


def test_warm_start_at_solution_stops_at_once(seed):
    a, b = _spd(20, 10, seed), _rhs(20, seed)
    x_star = torch.linalg.solve(a, b)
    res = cg(lambda v: a @ v, b, x0=x_star, tol=1e-8)
    assert res.n_iter == 0 and res.n_products == 1 and res.stop_reason == "residual_tol"


@pytest.mark.parametrize("radius", [0.01, 0.3, 2.0])
def test_steihaug_stays_inside_radius(radius, seed):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(25, 25, dtype=torch.float64, generator=gen))
    a = q @ torch.diag(torch.linspace(-1.0, 4.0, 25, dtype=torch.float64)) @ q.T
    b = _rhs(25, seed)
    res = steihaug_cg(lambda v: a @ v, b, radius=radius)
    assert float(res.x.norm()) <= radius * (1 + 1e-10)
    assert res.stop_reason in ("negative_curvature", "trust_region_boundary")
    assert float(res.x.norm()) == pytest.approx(radius, rel=1e-9)
    # The model decreases: 1/2 x^T A x - b^T x < 0.
    assert float(0.5 * res.x @ a @ res.x - b @ res.x) < 0


def test_steihaug_with_large_radius_gives_newton_step(seed):
    a, b = _spd(20, 50, seed), _rhs(20, seed)
    res = steihaug_cg(lambda v: a @ v, b, radius=1e6, tol=1e-12)
    assert res.stop_reason == "residual_tol"
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_cg_rejects_bad_input():
    b = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="max_iter=0"):
        cg(lambda v: v, b, max_iter=0)
    with pytest.raises(ValueError, match="positive diagonal"):
        cg(lambda v: v, b, preconditioner=-torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="radius=-1"):
        cg(lambda v: v, b, radius=-1)
    with pytest.raises(ValueError, match="flat vector"):
        cg(lambda v: v, torch.ones(2, 2))


def test_float32_cg_with_zero_tol_stops_at_round_off_instead_of_underflowing():
    """With tol=0 and a preconditioner (Hessian-free's setting) on a float32 system with a tiny right-hand
    side (a converged model's gradient), the residual used to underflow, p.Ap became
    denormal and the iterate turned NaN; CG must stop at the machine-epsilon floor."""
    a = _spd(30, 1e2, 0).float()
    b = 1e-6 * _rhs(30, 0).float()
    res = cg(lambda v: a @ v, b, max_iter=250, tol=0.0, preconditioner=torch.logspace(0, 2, 30))
    assert torch.isfinite(res.x).all()
    assert res.stop_reason == "residual_tol"
    assert res.n_iter < 250
    torch.testing.assert_close(res.x.double(), torch.linalg.solve(a.double(), b.double()), rtol=1e-3, atol=1e-9)


def test_cg_returns_last_finite_iterate_on_breakdown():
    a, b = _spd(10, 10, 1), _rhs(10, 1)
    calls = []

    def matvec(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ v if len(calls) <= 3 else torch.full_like(v, math.nan)

    res = cg(matvec, b, max_iter=50, tol=0.0)
    assert res.stop_reason == "breakdown"
    assert res.n_iter == 3 and torch.isfinite(res.x).all()
    assert res.quad_value < 0
