r"""Truncated Newton (Newton-CG) on exact Hessian or Gauss-Newton products.

Each step solves the damped Newton system

.. math::  (C + \lambda I)\, d = -g, \qquad C \in \{H, G\},

approximately by conjugate gradient (Dembo, Eisenstat & Steihaug 1982; Nocedal &
Wright 2006, Alg. 7.1), stopping when :math:`\|r\| \le \eta \|g\|` with the
forcing term :math:`\eta = \min(\text{cg\_tol}, \sqrt{\|g\|})` (superlinear local
convergence, N&W Thm. 7.2) or after ``cg_max_iter`` products.  Then one of:

* ``armijo``: backtracking from :math:`t = \text{lr}` (N&W Alg. 3.1);
* ``strong_wolfe``: a strong-Wolfe search (N&W Alg. 3.5);
* ``trust_region``: Steihaug-CG inside radius :math:`\Delta` instead of a line
  search; the ratio :math:`\rho` of actual to predicted reduction grows or shrinks
  :math:`\Delta` (N&W Alg. 4.1 / 7.2);
* ``none``: the fixed step :math:`\theta \leftarrow \theta + \text{lr}\, d`.

Negative curvature (:math:`p^\top (C + \lambda I) p \le 0` inside CG) either
truncates CG at the last iterate (steepest descent if it was the first,
N&W Alg. 7.1) or, with ``negative_curvature="direction"``, adds the direction
itself, signed for descent and scaled to :math:`\|g\|`, so the line search can
exploit it to leave the saddle.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from hpo2.curvature import DampedOperator
from hpo2.optim.base import Closure, CurvatureOptimizer
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings
from hpo2.solvers import armijo_backtracking, cg, strong_wolfe


class NewtonCGSettings(OptimizerSettings):
    """Settings of :class:`NewtonCG`; defaults after Nocedal & Wright (2006), ch. 7."""

    lr: Annotated[float, Field(gt=0), FloatRange(0.1, 1.0, log=True)] = 1.0
    damping: Annotated[float, Field(ge=0), FloatRange(1e-6, 1.0, log=True)] = 1e-3
    cg_max_iter: Annotated[int, Field(ge=1), IntRange(5, 100, log=True)] = 50
    cg_tol: Annotated[float, Field(gt=0, le=1), FloatRange(1e-3, 0.5, log=True)] = 0.5
    curvature: Annotated[Literal["hessian", "ggn"], Choice(("hessian", "ggn"))] = "hessian"
    globalization: Annotated[
        Literal["armijo", "strong_wolfe", "trust_region", "none"], Choice(("armijo", "trust_region"))
    ] = "armijo"
    negative_curvature: Literal["truncate", "direction"] = "truncate"
    tr_radius: Annotated[
        float, Field(gt=0), FloatRange(0.01, 10.0, log=True, when=("globalization", ("trust_region",)))
    ] = 1.0
    tr_max_radius: Annotated[float, Field(gt=0)] = 1000.0
    tr_eta: Annotated[float, Field(ge=0, lt=0.25)] = 0.15
    max_ls_evals: Annotated[int, Field(ge=1)] = 20
    tolerance_grad: Annotated[float, Field(ge=0)] = 1e-12


class NewtonCG(CurvatureOptimizer):
    """Newton-CG as a ``torch.optim.Optimizer``; the closure returns the loss
    (no ``backward()``).  See the module docstring for the method."""

    Settings = NewtonCGSettings

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        self._start_diagnostics(damping=group["damping"])
        loss, grads, operator = self._gradient_and_curvature(closure, group["curvature"])  # type: ignore[arg-type]
        g = self._flatten(grads)
        g_norm = float(g.norm())
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics(operator)
            return torch.tensor(loss)
        if g_norm <= group["tolerance_grad"]:
            self.diagnostics["status"] = "converged"
            self._finish_diagnostics(operator)
            return torch.tensor(loss)

        damped = DampedOperator(operator, group["damping"]).mv
        forcing = min(group["cg_tol"], math.sqrt(g_norm))
        x0 = self._flat_params()
        if group["globalization"] == "trust_region":
            self._trust_region_step(closure, x0, loss, g, damped, forcing)  # type: ignore[arg-type]
        else:
            self._line_search_step(closure, x0, loss, g, damped, forcing)  # type: ignore[arg-type]
        self._finish_diagnostics(operator)
        return torch.tensor(loss)

    def _record_cg(self, result: object) -> None:
        self.diagnostics.update(
            cg_iters=result.n_iter,  # type: ignore[attr-defined]
            cg_stop=result.stop_reason,  # type: ignore[attr-defined]
            negative_curvature=int(result.negative_curvature is not None),  # type: ignore[attr-defined]
        )

    def _line_search_step(self, closure: Closure, x0: Tensor, loss: float, g: Tensor, damped, forcing: float) -> None:
        group = self.param_groups[0]
        result = cg(damped, -g, max_iter=group["cg_max_iter"], tol=forcing)
        self._record_cg(result)
        d = result.x
        if result.negative_curvature is not None:
            if group["negative_curvature"] == "direction":
                p = result.negative_curvature
                sign = -1.0 if float(torch.dot(g, p)) > 0 else 1.0
                d = d + sign * p * (g.norm() / p.norm())
            elif result.n_iter == 0:
                d = -g
        slope = float(torch.dot(g, d))
        if slope >= 0:  # CG from zero always gives descent; guard against round-off
            d, slope = -g, -float(torch.dot(g, g))
        kind = group["globalization"]
        if kind == "none":
            t = group["lr"]
            self._set_flat_params(x0 + t * d)
            self.diagnostics.update(step_size=t, ls_evals=0, step_norm=t * float(d.norm()))
            return
        if kind == "armijo":

            def phi(t: float) -> float:
                self._set_flat_params(x0 + t * d)
                return self._loss_value(closure)

            ls = armijo_backtracking(phi, loss, slope, step0=group["lr"], max_evals=group["max_ls_evals"])
        else:

            def phi_wolfe(t: float) -> tuple[float, float]:
                self._set_flat_params(x0 + t * d)
                value, grad = self._value_and_grad(closure)
                return value, float(torch.dot(grad, d))

            ls = strong_wolfe(phi_wolfe, loss, slope, step0=group["lr"], max_evals=group["max_ls_evals"])
        self._move_to(x0, ls.step, d)
        if ls.step == 0.0:
            self.diagnostics["status"] = "rejected"
        self.diagnostics.update(step_size=ls.step, ls_evals=ls.n_evals, step_norm=ls.step * float(d.norm()))

    def _trust_region_step(self, closure: Closure, x0: Tensor, loss: float, g: Tensor, damped, forcing: float) -> None:
        group = self.param_groups[0]
        state = self.global_state
        radius = float(state.get("radius", group["tr_radius"]))
        result = cg(damped, -g, max_iter=group["cg_max_iter"], tol=forcing, radius=radius)
        self._record_cg(result)
        s = result.x
        predicted = -float(torch.dot(g, s) + 0.5 * torch.dot(s, damped(s)))
        self._set_flat_params(x0 + s)
        new_loss = self._loss_value(closure)
        rho = (loss - new_loss) / predicted if predicted > 0 and math.isfinite(new_loss) else -math.inf
        s_norm = float(s.norm())
        if rho < 0.25:
            # Below eps * ||x|| a step is round-off: at a converged point rho is noise,
            # and shrinking on would underflow the radius to zero.
            floor = torch.finfo(g.dtype).eps * max(1.0, float(x0.norm()))
            radius = max(0.25 * (s_norm if s_norm > 0 else radius), floor)
        elif rho > 0.75 and s_norm >= 0.99 * radius:
            radius = min(2.0 * radius, group["tr_max_radius"])
        state["radius"] = radius
        accepted = rho > group["tr_eta"]
        if not accepted:
            self._set_flat_params(x0)
            self.diagnostics["status"] = "rejected"
        self.diagnostics.update(
            reduction_ratio=rho if math.isfinite(rho) else -1e30,
            radius=radius,
            step_norm=s_norm if accepted else 0.0,
        )
