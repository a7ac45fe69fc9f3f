"""CG with its scalars on the device and its stop read every ``check_every`` iterations
gives what a plain CG that checks every iteration on the host gives (float64), makes a
handful of host conversions per solve, and agrees with SciPy's CG."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from torch import Tensor

from hpo2.solvers import DEFAULT_CHECK_EVERY, CGResult, backtrack_schedule, cg, default_check_every
from tests.host_sync import count_host_syncs


@dataclass
class _Reference:
    x: Tensor
    n_iter: int
    reason: str
    quad_values: list[float]
    iterates: list[tuple[int, Tensor]] = field(default_factory=list)
    curvature: float | None = None
    direction: Tensor | None = None


def _plain_cg(a: Tensor, b: Tensor, max_iter: int, tol: float = 0.0, martens_eps: float | None = None,
              radius: float | None = None, precond: Tensor | None = None) -> _Reference:
    """Textbook preconditioned CG (N&W Alg. 5.3) in Python floats, every test every iteration."""
    schedule = backtrack_schedule(max_iter)
    x, r = torch.zeros_like(b), b.clone()
    y = r / precond if precond is not None else r
    p, rho = y.clone(), float(r @ y)
    quads: list[float] = [0.0]
    stored: list[tuple[int, Tensor]] = []
    stop_res = max(tol, torch.finfo(b.dtype).eps) * float(b.norm())

    def done(x_out: Tensor, i: int, reason: str, curvature: float | None = None) -> _Reference:
        its = stored if stored and stored[-1][0] == i else [*stored, (i, x_out)]
        return _Reference(x_out, i, reason, quads, its, curvature, p if curvature is not None else None)

    def boundary(x: Tensor, p: Tensor) -> Tensor:
        assert radius is not None
        pp, xp, xx = float(p @ p), float(x @ p), float(x @ x)
        return x + (-xp + math.sqrt(xp * xp + pp * (radius**2 - xx))) / pp * p

    for i in range(1, max_iter + 1):
        if float(r.norm()) <= stop_res:
            return done(x, i - 1, "residual_tol")
        ap = a @ p
        pap, pp = float(p @ ap), float(p @ p)
        if pap <= 0:
            return done(boundary(x, p) if radius else x, i - 1, "negative_curvature", pap / pp)
        alpha = rho / pap
        if radius is not None and float((x + alpha * p).norm()) >= radius:
            return done(boundary(x, p), i, "trust_region_boundary")
        x, r = x + alpha * p, r - alpha * ap
        quads.append(float(-0.5 * x @ (r + b)))
        if i in schedule:
            stored.append((i, x.clone()))
        k = max(10, math.ceil(0.1 * i))
        if martens_eps and i > k and quads[i] < 0 and (quads[i] - quads[i - k]) / quads[i] < k * martens_eps:
            return done(x, i, "relative_progress")
        y = r / precond if precond is not None else r
        rho_next = float(r @ y)
        p, rho = y + rho_next / rho * p, rho_next
    return done(x, max_iter, "residual_tol" if float(r.norm()) <= stop_res else "max_iter")


def _matrix(n: int, eigenvalues: Tensor, seed: int) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(eigenvalues) @ q.T


def _rhs(n: int, seed: int) -> Tensor:
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 100))


def _assert_same(result: CGResult, ref: _Reference) -> None:
    assert result.stop_reason == ref.reason
    assert result.n_iter == ref.n_iter
    torch.testing.assert_close(result.x, ref.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.quad_values, ref.quad_values, rtol=1e-9, atol=1e-12)
    assert [i for i, _ in result.iterates] == [i for i, _ in ref.iterates]
    for (_, xi), (_, ri) in zip(result.iterates, ref.iterates, strict=True):
        torch.testing.assert_close(xi, ri, rtol=1e-9, atol=1e-12)


CHECKS = [1, 3, 5, 7]


@pytest.mark.parametrize("check_every", CHECKS)
@pytest.mark.parametrize("seed", [0, 1])
def test_martens_stop_and_stored_iterates_match_plain_cg(seed: int, check_every: int) -> None:
    a, b = _matrix(150, torch.logspace(-2, 2, 150, dtype=torch.float64), seed), _rhs(150, seed)
    ref = _plain_cg(a, b, 150, martens_eps=5e-3)
    assert ref.reason == "relative_progress" and len(ref.iterates) > 5
    result = cg(
        lambda v: a @ v, b, max_iter=150, tol=0.0, martens_eps=5e-3, store_iterates=True, check_every=check_every
    )
    _assert_same(result, ref)


@pytest.mark.parametrize("check_every", CHECKS)
def test_late_detected_stops_leave_the_result_untouched(check_every: int) -> None:
    """Stops at iterations between two reads: the extra products run on frozen vectors."""
    for seed in range(4):
        a = _matrix(40, torch.linspace(-1.0, 6.0, 40, dtype=torch.float64), seed)
        b = _rhs(40, seed)
        ref = _plain_cg(a, b, 40)
        assert ref.reason == "negative_curvature"
        result = cg(a.mv, b, max_iter=40, tol=0.0, store_iterates=True, check_every=check_every)
        _assert_same(result, ref)
        assert result.curvature == pytest.approx(ref.curvature, rel=1e-9)
        torch.testing.assert_close(result.negative_curvature, ref.direction, rtol=1e-9, atol=1e-12)
        late = result.n_products - (result.n_iter + 1)  # the product that met negative curvature is needed
        assert 0 <= late < check_every
        if check_every == 1:
            assert late == 0


def test_a_stop_between_reads_is_really_late_and_still_exact() -> None:
    a, b = _matrix(60, torch.logspace(0, 3, 60, dtype=torch.float64), 3), _rhs(60, 3)
    ref = _plain_cg(a, b, 200, tol=1e-8)
    assert ref.reason == "residual_tol" and ref.n_iter % 7 != 0
    result = cg(lambda v: a @ v, b, max_iter=200, tol=1e-8, store_iterates=True, check_every=7)
    assert result.n_products > result.n_iter  # the stop was seen after extra products...
    _assert_same(result, ref)  # ...which changed nothing


@pytest.mark.parametrize("check_every", CHECKS)
@pytest.mark.parametrize("radius", [0.05, 0.5, 5.0])
def test_steihaug_boundary_matches_plain_cg(radius: float, check_every: int) -> None:
    a = _matrix(30, torch.linspace(-0.5, 4.0, 30, dtype=torch.float64), 5)
    b = _rhs(30, 5)
    ref = _plain_cg(a, b, 60, radius=radius)
    result = cg(lambda v: a @ v, b, max_iter=60, tol=0.0, radius=radius, check_every=check_every)
    assert result.stop_reason == ref.reason and result.n_iter == ref.n_iter
    torch.testing.assert_close(result.x, ref.x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("check_every", [1, 5])
def test_preconditioned_residual_stop_matches_plain_cg(check_every: int) -> None:
    scales = torch.logspace(0, 3, 50, dtype=torch.float64)
    a = torch.diag(scales) + 0.05 * _matrix(50, torch.linspace(1, 2, 50, dtype=torch.float64), 7)
    b, m = _rhs(50, 7), torch.diagonal(a).clone()
    ref = _plain_cg(a, b, 100, tol=1e-9, precond=m)
    result = cg(
        lambda v: a @ v, b, max_iter=100, tol=1e-9, preconditioner=m, store_iterates=True, check_every=check_every
    )
    assert ref.reason == "residual_tol"
    _assert_same(result, ref)


@pytest.mark.parametrize("n_iter", [1, 7, 30])
def test_iterates_equal_scipy_cg(n_iter: int) -> None:
    # well conditioned: at cond 1e4 round-off alone parts two CGs by 1e-2 after 30 iterations
    a, b = _matrix(80, torch.logspace(0, 2, 80, dtype=torch.float64), 11), _rhs(80, 11)
    result = cg(lambda v: a @ v, b, max_iter=n_iter, tol=0.0)
    expected, _ = scipy.sparse.linalg.cg(a.numpy(), b.numpy(), rtol=0.0, atol=0.0, maxiter=n_iter)
    assert result.stop_reason == "max_iter"
    np.testing.assert_allclose(result.x.numpy(), expected, rtol=1e-7, atol=1e-8)


def test_fifty_iterations_make_a_handful_of_host_conversions() -> None:
    """Before: 254 (five conversions per iteration); now one read per check_every
    iterations (an accelerator's default)."""
    a, b = _matrix(200, torch.logspace(0, 6, 200, dtype=torch.float64), 0), _rhs(200, 0)
    with count_host_syncs() as counter:
        result = cg(lambda v: a @ v, b, max_iter=50, tol=0.0, martens_eps=5e-4, store_iterates=True,
                    check_every=DEFAULT_CHECK_EVERY)
    assert result.n_iter == 50 and result.stop_reason == "max_iter"
    assert counter.total <= 10, counter.by_kind
    with count_host_syncs() as counter:  # the CPU's default reads once per iteration, never more
        cg(lambda v: a @ v, b, max_iter=50, tol=0.0, martens_eps=5e-4, store_iterates=True)
    assert counter.total <= 50, counter.by_kind


def test_reads_every_iteration_on_the_cpu_and_every_five_on_an_accelerator() -> None:
    assert default_check_every(torch.device("cpu")) == 1
    assert default_check_every(torch.device("cuda", 0)) == default_check_every(torch.device("mps")) == 5
