"""Line searches (hpo2.solvers.linesearch) against SciPy and the Armijo / strong-Wolfe conditions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize

from hpo2.solvers import armijo_backtracking, strong_wolfe


def _rosenbrock(x: np.ndarray) -> float:
    return float(scipy.optimize.rosen(x))


def _phi_factory(x0: np.ndarray, d: np.ndarray):
    def phi(t: float) -> tuple[float, float]:
        x = x0 + t * d
        return _rosenbrock(x), float(scipy.optimize.rosen_der(x) @ d)

    return phi


def test_strong_wolfe_satisfies_both_conditions_on_rosenbrock(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        x0 = rng.uniform(-2, 2, size=4)
        d = -scipy.optimize.rosen_der(x0)
        phi = _phi_factory(x0, d)
        f0, g0 = phi(0.0)
        res = strong_wolfe(phi, f0, g0, step0=1.0, c1=1e-4, c2=0.9)
        assert res.success
        f, g = phi(res.step)
        assert f <= f0 + 1e-4 * res.step * g0
        assert abs(g) <= 0.9 * abs(g0)
        # SciPy's strong-Wolfe search finds an acceptable step too (reference sanity).
        ref = scipy.optimize.line_search(scipy.optimize.rosen, scipy.optimize.rosen_der, x0, d, c1=1e-4, c2=0.9)
        assert ref[0] is None or ref[3] <= f0


def test_armijo_backtracking_takes_first_acceptable_step():
    # phi(t) = (t - 0.2)^2: Armijo with c1=0.25 accepts t <= 0.3 only -> tries 1, 0.5, 0.25.
    phi = lambda t: (t - 0.2) ** 2  # noqa: E731
    res = armijo_backtracking(phi, value0=0.04, slope0=-0.4, step0=1.0, c1=0.25, shrink=0.5)
    assert res.success and res.step == 0.25 and res.n_evals == 3
    nan_first = armijo_backtracking(lambda t: math.nan if t > 0.5 else phi(t), 0.04, -0.4, c1=0.25)
    assert nan_first.success and nan_first.step == 0.25


def test_line_searches_reject_ascent_directions():
    with pytest.raises(ValueError, match="not a descent direction"):
        armijo_backtracking(lambda t: t, 0.0, 1.0)
    with pytest.raises(ValueError, match="not a descent direction"):
        strong_wolfe(lambda t: (t, 1.0), 0.0, 1.0)
