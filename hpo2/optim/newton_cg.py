r"""Truncated Newton (Newton-CG) on Gauss-Newton or exact Hessian products.

Each step solves the damped Newton system

.. math::  (C + \lambda I)\, d = -g, \qquad C \in \{G, H\},

with the Gauss-Newton matrix :math:`G = J^\top H_L J` by default when the closure
is a :class:`~hpo2.optim.closure.BatchClosure` (``curvature="auto"``; PSD, so CG is
not cut short by negative curvature on networks; Schraudolph 2002, Martens 2010)
and the Hessian otherwise or when asked (``curvature="hessian"``).  The curvature
may be taken on a ``curvature_fraction`` of the batch (a subsampled Hessian, Byrd,
Chin, Neveitt & Nocedal 2011).  On a batch streamed from a ``Dataset``
(:class:`~hpo2.optim.closure.StreamingClosure`) the gradient, line searches and
trust-region ratio are on the whole batch, a pass each, and the curvature on a
chunk of at most one loader batch.  The damping :math:`\lambda` adapts by
Levenberg-Marquardt's rule under every globalization (``damping_rule="lm"``):
with :math:`\rho = (f(\theta + s) - f(\theta)) / q_0(s)`, :math:`q_0` the undamped
quadratic model of the step :math:`s` taken, :math:`\lambda \leftarrow 3/2\,\lambda`
when :math:`\rho < 1/4` and :math:`2/3\,\lambda` when :math:`\rho > 3/4` (Moré 1978;
Martens 2010 sec. 4.1); ``"fixed"`` keeps it.  :math:`\lambda = 0` stays 0.

approximately by conjugate gradient (Dembo, Eisenstat & Steihaug 1982; Nocedal &
Wright 2006, Alg. 7.1), stopping when :math:`\|r\| \le \eta \|g\|` with the
forcing term :math:`\eta = \min(\text{cg\_tol}, \sqrt{\|g\|})` (superlinear local
convergence, N&W Thm. 7.2) or after ``cg_max_iter`` products.  Then one of:

* ``armijo``: backtracking from :math:`t = \text{lr}` (N&W Alg. 3.1);
* ``strong_wolfe``: a strong-Wolfe search (N&W Alg. 3.5);
* ``trust_region``: Steihaug-CG inside radius :math:`\Delta` instead of a line
  search; the ratio :math:`\rho` of actual to predicted reduction grows or shrinks
  :math:`\Delta` (N&W Alg. 4.1 / 7.2).  The prediction is the undamped model's
  :math:`q_0(s)`, the same :math:`\rho` that drives the damping: Martens (2010, sec.
  4.1) measures how well the undamped quadratic fits :math:`f` (the damping is part of
  the solve, not of the model), and since :math:`-q_0(s) = -q_\lambda(s) +
  \tfrac\lambda2\|s\|^2 \ge -q_\lambda(s)`, Steihaug's sufficient decrease of the
  damped model :math:`q_\lambda` holds for :math:`q_0` too (N&W Thm. 4.5 still applies);
* ``none``: the fixed step :math:`\theta \leftarrow \theta + \text{lr}\, d`.

Negative curvature (:math:`p^\top (C + \lambda I) p \le 0` inside CG) either
truncates CG at the last iterate (steepest descent if it was the first,
N&W Alg. 7.1) or, with ``negative_curvature="direction"``, adds the direction
itself, signed for descent and scaled to :math:`\|g\|`, so the line search can
exploit it to leave the saddle.

Cost (``grad_equivalents``): the gradient (with the Hessian on the whole batch, the
gradient whose graph the products walk), the curvature operator on a chunk, each
product and each loss of the search, at the prices measured on the optimizer's
first steps (:mod:`hpo2.optim.costs`): a Hessian-vector product costs 1.5-1.9
gradients, not one.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import CurvatureOperator, DampedOperator
from hpo2.optim.base import Closure, CurvatureOptimizer, ParameterRay
from hpo2.optim.closure import BatchClosure, StreamingClosure
from hpo2.optim.costs import SOLVER_ITERATIONS
from hpo2.optim.settings import BatchSize, Choice, DataRegimeSettings, FloatRange, IntRange, document_settings
from hpo2.solvers import CGResult, FixedStep, TrustRegion, cg, host_floats, levenberg_marquardt, make_line_search
from hpo2.solvers.cg import MatVec


class NewtonCGSettings(DataRegimeSettings):
    """Settings of :class:`NewtonCG`; defaults after Nocedal & Wright (2006), ch. 7,
    Martens (2010) for the damping rule."""

    family: ClassVar[str] = "Newton (CG)"
    reference: ClassVar[str] = "Nocedal & Wright, Numerical Optimization (2006), ch. 7; Martens, ICML 2010"

    lr: Annotated[float, Field(gt=0), FloatRange(0.1, 1.0, log=True)] = 1.0
    """Step length: the first trial step of the line search, or the fixed step when globalization='none'."""
    damping: Annotated[float, Field(ge=0), FloatRange(1e-6, 1.0, log=True)] = 1e-3
    """Initial Levenberg-Marquardt damping lambda added to the curvature, C + lambda I."""
    cg_max_iter: Annotated[int, Field(ge=1), IntRange(5, 100, log=True)] = 50
    """Most CG iterations (curvature products) per step."""
    cg_tol: Annotated[float, Field(gt=0, le=1), FloatRange(1e-3, 0.5, log=True)] = 0.5
    """CG forcing term cap: stop when ||r|| <= min(cg_tol, sqrt(||g||)) ||g|| (N&W Thm. 7.2)."""
    curvature: Annotated[Literal["auto", "ggn", "hessian"], Choice(("auto", "hessian"))] = "auto"
    """Curvature matrix: 'ggn' (Gauss-Newton, PSD), 'hessian', or 'auto' (GGN for a BatchClosure)."""
    curvature_fraction: Annotated[float, Field(gt=0, le=1), FloatRange(0.05, 1.0, log=True)] = 1.0
    """Fraction of the batch the curvature products use (subsampled Newton, Byrd et al. 2011)."""
    damping_rule: Annotated[Literal["lm", "fixed"], Choice(("lm", "fixed"))] = "lm"
    """'lm': adapt the damping by the reduction ratio (Martens 2010 sec. 4.1); 'fixed': keep it."""
    lm_boost: Annotated[float, Field(gt=1)] = 1.5
    """Factor on the damping when the reduction ratio is below 1/4."""
    lm_drop: Annotated[float, Field(gt=0, lt=1)] = 2.0 / 3.0
    """Factor on the damping when the reduction ratio is above 3/4."""
    globalization: Annotated[
        Literal["armijo", "strong_wolfe", "trust_region", "none"], Choice(("armijo", "trust_region"))
    ] = "armijo"
    """Step control: Armijo backtracking, strong Wolfe search, Steihaug trust region, or none."""
    negative_curvature: Literal["truncate", "direction"] = "truncate"
    """On negative curvature in CG: 'truncate' at the last iterate, or add the 'direction' too."""
    tr_radius: Annotated[
        float, Field(gt=0), FloatRange(0.01, 10.0, log=True, when=("globalization", ("trust_region",)))
    ] = 1.0
    """Initial trust-region radius (parameter-space norm; globalization='trust_region')."""
    tr_max_radius: Annotated[float, Field(gt=0)] = 1000.0
    """Largest trust-region radius."""
    tr_eta: Annotated[float, Field(ge=0, lt=0.25)] = 0.15
    """Least reduction ratio for a trust-region step to be accepted (N&W Alg. 4.1)."""
    max_ls_evals: Annotated[int, Field(ge=1)] = 20
    """Most loss evaluations per line search."""
    tolerance_grad: Annotated[float, Field(ge=0)] = 1e-12
    """Stop (status 'converged') when the gradient norm is at most this."""


@document_settings
class NewtonCG(CurvatureOptimizer):
    r"""Newton-CG as a ``torch.optim.Optimizer``; the closure returns the loss
    (no ``backward()``).  See the module docstring for the method.

    Example:
        One undamped Newton step solves a convex quadratic :math:`\tfrac12 x^\top A x - b^\top x`:

        >>> import torch
        >>> from hpo2.optim import NewtonCG
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> opt = NewtonCG([x], damping=0.0, cg_tol=1e-10, globalization="none")
        >>> _ = opt.step(lambda: 0.5 * x @ A @ x - b @ x)
        >>> torch.allclose(x.detach(), torch.linalg.solve(A, b))
        True
    """

    Settings = NewtonCGSettings
    streams = True

    def __init__(
        self,
        params: ParamsT,
        *,
        batch_size: BatchSize = None,
        lr: float = 1.0,
        damping: float = 1e-3,
        cg_max_iter: int = 50,
        cg_tol: float = 0.5,
        curvature: Literal["auto", "ggn", "hessian"] = "auto",
        curvature_fraction: float = 1.0,
        damping_rule: Literal["lm", "fixed"] = "lm",
        lm_boost: float = 1.5,
        lm_drop: float = 2.0 / 3.0,
        globalization: Literal["armijo", "strong_wolfe", "trust_region", "none"] = "armijo",
        negative_curvature: Literal["truncate", "direction"] = "truncate",
        tr_radius: float = 1.0,
        tr_max_radius: float = 1000.0,
        tr_eta: float = 0.15,
        max_ls_evals: int = 20,
        tolerance_grad: float = 1e-12,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            batch_size=batch_size, lr=lr, damping=damping, cg_max_iter=cg_max_iter, cg_tol=cg_tol, curvature=curvature,
            curvature_fraction=curvature_fraction, damping_rule=damping_rule, lm_boost=lm_boost, lm_drop=lm_drop,
            globalization=globalization, negative_curvature=negative_curvature, tr_radius=tr_radius,
            tr_max_radius=tr_max_radius, tr_eta=tr_eta, max_ls_evals=max_ls_evals, tolerance_grad=tolerance_grad
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        group = self.param_groups[0]
        state = self.global_state
        damping = float(state.get("damping", group["damping"]))
        self._start_diagnostics(damping=damping)
        curvature = group["curvature"]
        if curvature == "auto":
            curvature = "ggn" if isinstance(closure, BatchClosure | StreamingClosure) else "hessian"
        loss_t, grads, operator, fraction = self._gradient_and_curvature(
            closure, curvature, group["curvature_fraction"]
        )
        assert closure is not None, "the call above raises on a missing closure"
        g = self._flatten(grads)
        loss, g_norm = host_floats(loss_t, g.norm())  # the step's one read before CG: finite? converged?
        self.diagnostics.update(loss=loss, grad_norm=g_norm, curvature=curvature)
        price = None
        if self._check_finite(loss, g_norm) and not self._converged(g_norm):
            damped = DampedOperator(operator, damping).mv
            forcing = min(group["cg_tol"], math.sqrt(g_norm))
            steihaug = group["globalization"] == "trust_region"
            radius = float(state.get("radius", group["tr_radius"])) if steihaug else None

            def solve(max_iter: int) -> CGResult:
                return cg(damped, -g, max_iter=max_iter, tol=forcing, radius=radius)

            # a product is priced on the first iterations of this very solve: its cost depends on the vectors
            timed = min(group["cg_max_iter"], SOLVER_ITERATIONS)
            price = self._product_price(closure, operator, lambda: solve(timed))
            result = solve(group["cg_max_iter"])
            self._record_cg(result)
            x0 = self._flat_params()
            if radius is not None:
                rho = self._trust_region_step(closure, x0, loss, g, damped, damping, result, radius)
            else:
                rho = self._line_search_step(closure, x0, loss, g, g_norm, result, operator, damping)
            if group["damping_rule"] == "lm":
                damping = levenberg_marquardt(damping, rho, group["lm_boost"], group["lm_drop"])
            state["damping"] = damping
            self._record_ratio(rho, damping)
        self._finish_diagnostics(operator, fraction, price)
        return loss_t

    def _converged(self, g_norm: float) -> bool:
        if g_norm > self.param_groups[0]["tolerance_grad"]:
            return False
        self.diagnostics["status"] = "converged"
        return True

    def _direction(
        self, g: Tensor, g_norm: float, result: CGResult, operator: CurvatureOperator, damping: float
    ) -> tuple[Tensor, float, float, float]:
        r"""The search direction :math:`d`, its slope :math:`g^\top d`, its undamped
        curvature :math:`d^\top C d` and its norm, read in one transfer.

        CG's iterate :math:`x` gives :math:`x^\top C x` from its model value
        :math:`\phi = g^\top x + x^\top (C + \lambda) x / 2` at no product; a direction
        off CG's path (negative curvature, steepest descent) costs one product."""
        group = self.param_groups[0]
        x = d = result.x
        from_cg = True
        if result.negative_curvature is not None:
            if group["negative_curvature"] == "direction":
                p = result.negative_curvature
                sign = torch.where(torch.dot(g, p) > 0, -1.0, 1.0)
                d = x + sign * p * (g.norm() / p.norm())
                from_cg = False
            elif result.n_iter == 0:
                d, from_cg = -g, False
        gx, xx, slope, dd = host_floats(torch.dot(g, x), torch.dot(x, x), torch.dot(g, d), torch.dot(d, d))
        curv_d = 2 * (result.quad_value - gx) - damping * xx
        if slope >= 0:  # CG from zero always gives descent; guard against round-off
            d, slope, dd, from_cg = -g, -g_norm**2, g_norm**2, False
        if not from_cg and group["damping_rule"] == "lm":
            (curv_d,) = host_floats(torch.dot(d, operator.mv(d)))  # one more product, only off CG's path
        return d, slope, curv_d, math.sqrt(dd)

    def _line_search_step(
        self, closure: Closure, x0: Tensor, loss: float, g: Tensor, g_norm: float, result: CGResult,
        operator: CurvatureOperator, damping: float,
    ) -> float:
        """Search along the direction from CG's ``result``, move; return the reduction
        ratio of the step taken against the undamped model (``-inf`` when rejected)."""
        group = self.param_groups[0]
        d, slope, curv_d, d_norm = self._direction(g, g_norm, result, operator, damping)
        search = make_line_search(group["globalization"], max_evals=group["max_ls_evals"])
        ray = ParameterRay(self, x0, d, lambda: self._loss(closure), lambda: self._value_and_grad(closure))
        ls = search.search(ray, loss, slope, group["lr"])
        t = ls.step
        self._move_to(x0, t, d)
        self.diagnostics.update(step_size=t, ls_evals=ls.n_evals, step_norm=t * d_norm)
        if t == 0.0:
            self.diagnostics["status"] = "rejected"
            return -math.inf
        value = ls.value
        if isinstance(search, FixedStep):  # nothing evaluated: the ratio needs the new loss
            if group["damping_rule"] != "lm":
                return math.nan
            (value,) = host_floats(self._loss(closure))
        return self._ratio(value - loss, t * slope + 0.5 * t * t * curv_d)

    @staticmethod
    def _ratio(actual: float, predicted: float) -> float:
        r""":math:`\rho` = actual / predicted change; ``-inf`` unless the model predicts a
        decrease and the loss is finite."""
        return actual / predicted if predicted < 0 and math.isfinite(actual) else -math.inf

    def _trust_region_step(
        self, closure: Closure, x0: Tensor, loss: float, g: Tensor, damped: MatVec, damping: float,
        result: CGResult, radius: float,
    ) -> float:
        """Take Steihaug-CG's ``result`` if the reduction ratio against the undamped model
        accepts it; grow or shrink the radius; return the ratio."""
        group = self.param_groups[0]
        state = self.global_state
        s = result.x
        # the undamped model q_0(s) = g's + s'Cs/2, with s'Cs = s'(C + lambda I)s - lambda s's (module docstring)
        predicted_t = -(torch.dot(g, s) + 0.5 * (torch.dot(s, damped(s)) - damping * torch.dot(s, s)))
        self._set_flat_params(x0 + s)
        predicted, new_loss, s_norm, x0_norm = host_floats(predicted_t, self._loss(closure), s.norm(), x0.norm())
        rho = (loss - new_loss) / predicted if predicted > 0 and math.isfinite(new_loss) else -math.inf
        # Below eps * ||x|| a step is round-off: at a converged point rho is noise,
        # and shrinking on would underflow the radius to zero.
        floor = torch.finfo(g.dtype).eps * max(1.0, x0_norm)
        region = TrustRegion(max_radius=group["tr_max_radius"], eta=group["tr_eta"])
        radius, accepted = region.update(radius, rho, s_norm, floor)
        state["radius"] = radius
        if not accepted:
            self._set_flat_params(x0)
            self.diagnostics["status"] = "rejected"
        self.diagnostics.update(radius=radius, step_norm=s_norm if accepted else 0.0)
        return rho
