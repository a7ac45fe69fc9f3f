r"""Line searches along a descent direction :math:`d` from :math:`x`.

Both work on the one-dimensional restriction :math:`\varphi(t) = f(x + t d)`, with
:math:`\varphi(0)` and :math:`\varphi'(0) = \nabla f(x)^\top d < 0` given:

* :func:`armijo_backtracking` (Armijo 1966; Nocedal & Wright, Alg. 3.1): shrink
  :math:`t` until :math:`\varphi(t) \le \varphi(0) + c_1 t \varphi'(0)`.  Needs
  function values only -- what Newton-CG and Hessian-free use.
* :func:`strong_wolfe` (Nocedal & Wright, Alg. 3.5 and 3.6): find :math:`t` with
  the sufficient decrease above and the strong curvature condition
  :math:`|\varphi'(t)| \le c_2 |\varphi'(0)|`, by bracketing then zooming with
  safeguarded cubic interpolation (N&W eq. 3.59).  What L-BFGS needs to keep
  :math:`s^\top y > 0`.

``phi`` may return 0-d tensors: each trial point's value (and slope) is read on the
host in one transfer (:func:`~hpo2.solvers.host.host_floats`), the one round trip
the accept/reject test needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from hpo2.solvers.host import host_floats

Scalar = Tensor | float


@dataclass
class LineSearchResult:
    """The accepted step, its value (and slope for Wolfe), evaluations used, and
    whether the conditions were met (otherwise the best point seen is returned)."""

    step: float
    value: float
    slope: float | None
    n_evals: int
    success: bool


def _check_descent(value0: float, slope0: float) -> None:
    if not math.isfinite(value0) or not math.isfinite(slope0):
        raise ValueError(f"line search needs a finite start: value={value0}, slope={slope0}")
    if slope0 >= 0:
        raise ValueError(f"not a descent direction: the directional derivative is {slope0} (must be < 0)")


def armijo_backtracking(
    phi: Callable[[float], Scalar],
    value0: float,
    slope0: float,
    step0: float = 1.0,
    c1: float = 1e-4,
    shrink: float = 0.5,
    max_evals: int = 20,
) -> LineSearchResult:
    r"""Backtrack from ``step0`` by ``shrink`` until Armijo's condition holds.

    Returns ``success=False`` and step 0 when ``max_evals`` evaluations found no
    acceptable step (a non-finite value counts as unacceptable).

    Args:
        phi: :math:`\varphi(t)`, the loss at step :math:`t` along the direction.
        value0, slope0: :math:`\varphi(0)` and :math:`\varphi'(0) < 0`.
        step0: the first trial step.
        c1: the sufficient-decrease constant: accept when
            :math:`\varphi(t) \le \varphi(0) + c_1 t \varphi'(0)` (N&W eq. 3.4).
        shrink: factor on the step after each rejection.
        max_evals: most evaluations of ``phi``.

    Example:
        On :math:`\varphi(t) = (t - 0.2)^2` with :math:`c_1 = 0.5` the steps 1, 0.5 and 0.25 fail
        :math:`\varphi(t) \le \varphi(0) + c_1 t \varphi'(0)`; 0.125 passes:

        >>> from hpo2.solvers import armijo_backtracking
        >>> phi = lambda t: (t - 0.2) ** 2
        >>> result = armijo_backtracking(phi, value0=phi(0.0), slope0=-0.4, step0=1.0, c1=0.5)
        >>> result.step, result.n_evals
        (0.125, 4)
    """
    _check_descent(value0, slope0)
    if not 0 < shrink < 1:
        raise ValueError(f"shrink={shrink} must be in (0, 1)")
    t = step0
    for n in range(1, max_evals + 1):
        (value,) = host_floats(phi(t))
        if math.isfinite(value) and value <= value0 + c1 * t * slope0:
            return LineSearchResult(t, value, None, n, True)
        t *= shrink
    return LineSearchResult(0.0, value0, slope0, max_evals, False)


def _cubic_minimizer(a: float, fa: float, ga: float, b: float, fb: float, gb: float) -> float | None:
    """Minimiser of the cubic through two points with slopes (N&W eq. 3.59), or
    ``None`` when the cubic has no real minimiser."""
    if a == b:
        return None
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = gb - ga + 2 * d2
    if denom == 0:
        return None
    return b - (b - a) * (gb + d2 - d1) / denom


def strong_wolfe(
    phi: Callable[[float], tuple[Scalar, Scalar]],
    value0: float,
    slope0: float,
    step0: float = 1.0,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_evals: int = 25,
    step_max: float = 1e10,
    tol_change: float = 1e-12,
) -> LineSearchResult:
    r"""Strong-Wolfe line search; ``phi(t)`` returns :math:`(\varphi(t), \varphi'(t))`.

    Args:
        phi: :math:`t \mapsto (\varphi(t), \varphi'(t))` along the direction.
        value0, slope0: :math:`\varphi(0)` and :math:`\varphi'(0) < 0`.
        step0: the first trial step.
        c1, c2: the sufficient-decrease and curvature constants, :math:`0 < c_1 < c_2 < 1`.
        max_evals: most evaluations of ``phi`` in all.
        step_max: largest step tried while bracketing (extrapolation doubles the step).
        tol_change: stop zooming once the bracket is this narrow.

    Example:
        On :math:`\varphi(t) = (t - 3)^2` the accepted step satisfies
        :math:`|\varphi'(t)| \le c_2 |\varphi'(0)|`:

        >>> from hpo2.solvers import strong_wolfe
        >>> phi = lambda t: ((t - 3.0) ** 2, 2 * (t - 3.0))
        >>> result = strong_wolfe(phi, *phi(0.0), step0=1.0, c2=0.1)
        >>> result.success, abs(result.slope) <= 0.1 * 6.0
        (True, True)
    """
    _check_descent(value0, slope0)
    if not 0 < c1 < c2 < 1:
        raise ValueError(f"need 0 < c1 < c2 < 1, got c1={c1}, c2={c2}")
    sufficient = lambda t, v: v <= value0 + c1 * t * slope0  # noqa: E731
    curvature_ok = lambda g: abs(g) <= -c2 * slope0  # noqa: E731

    prev = (0.0, value0, slope0)
    t, n = step0, 0
    bracket: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    while n < max_evals:
        value, slope = host_floats(*phi(t))
        n += 1
        if not math.isfinite(value):  # overshoot into a non-finite region: treat as too long
            bracket = (prev, (t, math.inf, math.nan))
            break
        if not sufficient(t, value) or (n > 1 and value >= prev[1]):
            bracket = (prev, (t, value, slope))
            break
        if curvature_ok(slope):
            return LineSearchResult(t, value, slope, n, True)
        if slope >= 0:
            bracket = ((t, value, slope), prev)
            break
        prev = (t, value, slope)
        t = min(2.0 * t, step_max)
        if prev[0] == step_max:
            return LineSearchResult(prev[0], prev[1], prev[2], n, False)
    if bracket is None:
        return LineSearchResult(prev[0], prev[1], prev[2], n, False)

    # Zoom: lo always satisfies sufficient decrease and has the lowest value seen.
    lo, hi = bracket
    while n < max_evals and abs(hi[0] - lo[0]) > tol_change:
        left, right = min(lo[0], hi[0]), max(lo[0], hi[0])
        margin = 0.1 * (right - left)
        trial = None
        if math.isfinite(hi[1]) and math.isfinite(hi[2]):
            trial = _cubic_minimizer(lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])
        if trial is None or not left + margin <= trial <= right - margin:
            trial = 0.5 * (left + right)
        value, slope = host_floats(*phi(trial))
        n += 1
        if not math.isfinite(value) or not sufficient(trial, value) or value >= lo[1]:
            hi = (trial, value, slope)
            continue
        if curvature_ok(slope):
            return LineSearchResult(trial, value, slope, n, True)
        if slope * (hi[0] - lo[0]) >= 0:
            hi = lo
        lo = (trial, value, slope)
    return LineSearchResult(lo[0], lo[1], lo[2], n, False)
