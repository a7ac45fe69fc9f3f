r"""Globalization: how far to move along a search direction, as objects the
optimizers share (in the spirit of optax's composable line searches).

A line search sees the objective only through a :class:`Ray`, the restriction
:math:`\varphi(t) = f(x_0 + t d)`; the optimizer supplies the ray (which batch,
what it costs) and the search decides the step:

* :class:`FixedStep` (``"none"``): :math:`t = t_0`, nothing evaluated;
* :class:`Armijo` (``"armijo"``): backtracking until sufficient decrease
  (:func:`~hpo2.solvers.linesearch.armijo_backtracking`, N&W Alg. 3.1);
* :class:`StrongWolfe` (``"strong_wolfe"``): bracketing and zoom
  (:func:`~hpo2.solvers.linesearch.strong_wolfe`, N&W Alg. 3.5/3.6).

:func:`make_line_search` builds one from a setting's name.  A trust region is the
other globalization: the step comes from CG inside the radius
(:func:`~hpo2.solvers.cg.steihaug_cg`) and :class:`TrustRegion` updates the radius
from the ratio of actual to predicted reduction (N&W Alg. 4.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from torch import Tensor

from hpo2.solvers.linesearch import LineSearchResult, armijo_backtracking, strong_wolfe

LineSearchName = Literal["none", "armijo", "strong_wolfe"]


class Ray(Protocol):
    r""":math:`\varphi(t) = f(x_0 + t d)`; each call moves the parameters to :math:`x_0 + t d`."""

    def value(self, t: float) -> Tensor | float:
        """:math:`\\varphi(t)` (forward only)."""
        ...

    def value_and_slope(self, t: float) -> tuple[Tensor | float, Tensor | float]:
        """:math:`(\\varphi(t), \\varphi'(t) = \\nabla f(x_0 + t d)^\\top d)`."""
        ...


@dataclass(frozen=True)
class FixedStep:
    """The fixed step :math:`t = t_0`: no evaluation, always accepted."""

    def search(self, ray: Ray, value0: float, slope0: float, step0: float) -> LineSearchResult:
        return LineSearchResult(step0, math.nan, None, 0, True)


@dataclass(frozen=True)
class Armijo:
    """Armijo backtracking from :math:`t_0` by ``shrink`` with constant ``c1``."""

    c1: float = 1e-4
    shrink: float = 0.5
    max_evals: int = 20

    def search(self, ray: Ray, value0: float, slope0: float, step0: float) -> LineSearchResult:
        return armijo_backtracking(ray.value, value0, slope0, step0, self.c1, self.shrink, self.max_evals)


@dataclass(frozen=True)
class StrongWolfe:
    """Strong-Wolfe search with constants ``c1 < c2``; needs slopes (a gradient per trial)."""

    c1: float = 1e-4
    c2: float = 0.9
    max_evals: int = 25

    def search(self, ray: Ray, value0: float, slope0: float, step0: float) -> LineSearchResult:
        return strong_wolfe(ray.value_and_slope, value0, slope0, step0, self.c1, self.c2, self.max_evals)


LineSearch = FixedStep | Armijo | StrongWolfe


def make_line_search(
    name: LineSearchName, *, c1: float = 1e-4, c2: float = 0.9, shrink: float = 0.5, max_evals: int = 20
) -> LineSearch:
    """The line search a setting names (``"none"``, ``"armijo"``, ``"strong_wolfe"``)."""
    if name == "none":
        return FixedStep()
    if name == "armijo":
        return Armijo(c1, shrink, max_evals)
    if name == "strong_wolfe":
        return StrongWolfe(c1, c2, max_evals)
    raise ValueError(f"line search {name!r} is not one of 'none', 'armijo', 'strong_wolfe'")


@dataclass(frozen=True)
class TrustRegion:
    r"""The radius rule of N&W Alg. 4.1: with :math:`\rho` = actual / predicted
    reduction, shrink to :math:`\tfrac14 \|s\|` when :math:`\rho < \tfrac14`, double
    (up to ``max_radius``) when :math:`\rho > \tfrac34` and the step reached the
    boundary; accept the step when :math:`\rho >` ``eta``."""

    max_radius: float = 1000.0
    eta: float = 0.15

    def update(self, radius: float, rho: float, step_norm: float, floor: float = 0.0) -> tuple[float, bool]:
        """The next radius and whether the step is accepted.  ``floor`` bounds the
        shrinking (below round-off a ratio is noise and the radius would underflow)."""
        if rho < 0.25:
            radius = max(0.25 * (step_norm if step_norm > 0 else radius), floor)
        elif rho > 0.75 and step_norm >= 0.99 * radius:
            radius = min(2.0 * radius, self.max_radius)
        return radius, rho > self.eta


def levenberg_marquardt(damping: float, rho: float, boost: float = 1.5, drop: float = 2.0 / 3.0) -> float:
    r"""Levenberg-Marquardt's damping rule (Moré 1978; Martens 2010 sec. 4.1): with the
    reduction ratio :math:`\rho`, :math:`\lambda \cdot` ``boost`` when :math:`\rho < 1/4`,
    :math:`\lambda \cdot` ``drop`` when :math:`\rho > 3/4`, else unchanged (a NaN
    ratio leaves it unchanged)."""
    if rho < 0.25:
        return damping * boost
    if rho > 0.75:
        return damping * drop
    return damping
