r"""Limited-memory BFGS (Liu & Nocedal 1989; Nocedal & Wright 2006, Alg. 7.4/7.5).

The direction :math:`d = -H_k g` comes from the two-loop recursion over the last
``history_size`` pairs :math:`s_i = \theta_{i+1} - \theta_i`,
:math:`y_i = g_{i+1} - g_i`, starting from :math:`H_k^0 = \gamma_k I`:

* ``initial_scaling="secant"``: :math:`\gamma_k = s^\top y / y^\top y` of the newest
  pair (N&W eq. 7.20);
* ``initial_scaling="hvp"``: :math:`\gamma_k = g^\top g / g^\top H g`, the exact
  inverse curvature along the gradient from one Hessian-vector product (the
  Cauchy step length of the quadratic model).  It costs one extra gradient and one
  product per iteration and falls back to the secant value when
  :math:`g^\top H g \le 0`; the closure must then return the loss without
  calling ``backward()``.

A pair is skipped when :math:`s^\top y \le 10^{-10}` (the update would lose
positive definiteness).  Steps are fixed (:math:`t = \text{lr}`, the first one
scaled by :math:`\min(1, 1/\|g\|_1)`) or found by a strong-Wolfe line search.

The settings and their meaning follow ``torch.optim.LBFGS`` (``max_iter`` inner
iterations per ``step`` call, ``max_eval``, ``tolerance_grad``,
``tolerance_change``), and with a fixed step the iterates equal its iterates. The
closure may call ``backward()`` as for ``torch.optim.LBFGS``, or return the loss
without it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import HessianOperator
from hpo2.optim.base import Closure, CurvatureOptimizer
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, document_settings
from hpo2.solvers import strong_wolfe


class LBFGSSettings(OptimizerSettings):
    """Settings of :class:`LBFGS` (``torch.optim.LBFGS``'s names and defaults, with
    the strong-Wolfe search that Nocedal & Wright prescribe as default)."""

    family: ClassVar[str] = "quasi-Newton"
    reference: ClassVar[str] = "Liu & Nocedal, Math. Programming 45 (1989); Nocedal & Wright (2006), Alg. 7.4-7.5"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-3, 1.0, log=True)] = 1.0
    """Step length (the fixed step, or the line search's first trial); torch.optim.LBFGS's lr."""
    max_iter: Annotated[int, Field(ge=1), IntRange(1, 20, log=True)] = 20
    """L-BFGS iterations per step() call."""
    max_eval: Annotated[int | None, Field(ge=1)] = None
    """Most loss evaluations per step() call (None: 1.25 * max_iter, as torch)."""
    tolerance_grad: Annotated[float, Field(ge=0)] = 1e-7
    """Stop when the largest absolute gradient entry is at most this."""
    tolerance_change: Annotated[float, Field(ge=0)] = 1e-9
    """Stop when the step or the loss change is at most this."""
    history_size: Annotated[int, Field(ge=1), IntRange(3, 100, log=True)] = 100
    """Number of (s, y) curvature pairs kept (the memory m of Nocedal & Wright Alg. 7.5)."""
    line_search: Annotated[Literal["none", "strong_wolfe"], Choice(("none", "strong_wolfe"))] = "strong_wolfe"
    """'strong_wolfe' search (N&W Alg. 3.5) or 'none' (fixed step lr)."""
    initial_scaling: Annotated[Literal["secant", "hvp"], Choice(("secant", "hvp"))] = "secant"
    """H0 = gamma I with gamma from the newest pair ('secant', N&W eq. 7.20) or one HVP ('hvp')."""
    ls_c1: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    """Strong-Wolfe sufficient-decrease constant c1."""
    ls_c2: Annotated[float, Field(gt=0, lt=1)] = 0.9
    """Strong-Wolfe curvature constant c2."""


def two_loop_direction(g: Tensor, s_hist: list[Tensor], y_hist: list[Tensor], rho_hist: list[float], gamma: float) -> Tensor:
    r""":math:`-H_k g` by the two-loop recursion (Nocedal & Wright, Alg. 7.4)."""
    q = -g
    alphas = []
    for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
        alpha = rho * float(torch.dot(s, q))
        q = q - alpha * y
        alphas.append(alpha)
    r = gamma * q
    for s, y, rho, alpha in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
        beta = rho * float(torch.dot(y, r))
        r = r + (alpha - beta) * s
    return r


@document_settings
class LBFGS(CurvatureOptimizer):
    """L-BFGS as a ``torch.optim.Optimizer`` (one parameter group).

    Example:
        One ``step`` (up to ``max_iter`` iterations) finds the minimum of Rosenbrock's function:

        >>> import torch
        >>> from hpo2.optim import LBFGS
        >>> x = torch.tensor([-1.5, 2.0], dtype=torch.float64, requires_grad=True)
        >>> opt = LBFGS([x], max_iter=100)
        >>> _ = opt.step(lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)
        >>> torch.allclose(x.detach(), torch.ones(2, dtype=torch.float64), atol=1e-5)
        True
    """

    Settings = LBFGSSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search: Literal["none", "strong_wolfe"] = "strong_wolfe",
        initial_scaling: Literal["secant", "hvp"] = "secant",
        ls_c1: float = 1e-4,
        ls_c2: float = 0.9,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, history_size=history_size, line_search=line_search,
            initial_scaling=initial_scaling, ls_c1=ls_c1, ls_c2=ls_c2
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def _hvp_gamma(self, closure: Closure, g: Tensor) -> float | None:
        """:math:`g^\\top g / g^\\top H g` at the current parameters, or None if not positive."""
        loss = self._call_closure(closure)
        with torch.enable_grad():
            op = HessianOperator(loss, self._params)
        curvature = float(torch.dot(g, op.mv(g)))
        self._count("n_grad")
        self._count("n_hvp")
        return float(torch.dot(g, g)) / curvature if curvature > 0 else None

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        lr, max_iter = group["lr"], group["max_iter"]
        max_eval = group["max_eval"] if group["max_eval"] is not None else max_iter * 5 // 4
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        state = self.global_state
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)
        state.setdefault("s_hist", [])
        state.setdefault("y_hist", [])
        state.setdefault("rho_hist", [])
        self._start_diagnostics()

        allow_backward = group["initial_scaling"] == "secant"
        loss, g = self._value_and_grad(closure, allow_backward)  # type: ignore[arg-type]
        first_loss = loss
        state["func_evals"] += 1
        evals = 1
        self.diagnostics.update(loss=loss, grad_norm=float(g.norm()))
        if not self._check_finite(loss, float(g.norm())):
            self._finish_diagnostics()
            return torch.tensor(loss)
        if float(g.abs().max()) <= tol_grad:
            self.diagnostics["status"] = "converged"
            self._finish_diagnostics()
            return torch.tensor(first_loss)

        d, t = state.get("d"), state.get("t")
        prev_g, prev_loss = state.get("prev_g"), state.get("prev_loss")
        s_hist, y_hist, rho_hist = state["s_hist"], state["y_hist"], state["rho_hist"]
        gamma = float(state.get("gamma", 1.0))
        skipped = 0
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                s_hist.clear(), y_hist.clear(), rho_hist.clear()
                gamma = 1.0
                d = -g
            else:
                y = g - prev_g
                s = d * t
                ys = float(torch.dot(y, s))
                if ys > 1e-10:
                    if len(s_hist) == group["history_size"]:
                        s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
                    s_hist.append(s)
                    y_hist.append(y)
                    rho_hist.append(1.0 / ys)
                    gamma = ys / float(torch.dot(y, y))
                else:
                    skipped += 1
                if group["initial_scaling"] == "hvp":
                    gamma = self._hvp_gamma(closure, g) or gamma  # type: ignore[arg-type]
                d = two_loop_direction(g, s_hist, y_hist, rho_hist, gamma)
            prev_g, prev_loss = g.clone(), loss
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / float(g.abs().sum())) * lr
                if group["initial_scaling"] == "hvp":
                    t = (self._hvp_gamma(closure, g) or t / lr) * lr  # type: ignore[arg-type]
            else:
                t = lr
            slope = float(torch.dot(g, d))
            if slope > -tol_change:
                break

            ls_evals = 0
            if group["line_search"] == "strong_wolfe":
                x0 = self._flat_params()
                evaluated: dict[float, tuple[float, Tensor]] = {}

                def phi(step: float) -> tuple[float, float]:
                    self._set_flat_params(x0 + step * d)
                    evaluated[step] = self._value_and_grad(closure, allow_backward)  # type: ignore[arg-type]
                    return evaluated[step][0], float(torch.dot(evaluated[step][1], d))

                ls = strong_wolfe(
                    phi, loss, slope, step0=t, c1=group["ls_c1"], c2=group["ls_c2"], max_evals=max(1, max_eval - evals)
                )
                ls_evals = ls.n_evals
                self._move_to(x0, ls.step, d)
                if ls.step in evaluated:
                    loss, g = evaluated[ls.step]
                t = ls.step
            else:
                self._set_flat_params(self._flat_params() + t * d)
                if n_iter != max_iter:
                    loss, g = self._value_and_grad(closure, allow_backward)  # type: ignore[arg-type]
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals

            if n_iter == max_iter or evals >= max_eval:
                break
            if float(g.abs().max()) <= tol_grad:
                break
            if float((d * t).abs().max()) <= tol_change:
                break
            if abs(loss - prev_loss) < tol_change:
                break

        state.update(d=d, t=t, prev_g=prev_g, prev_loss=prev_loss, gamma=gamma)
        self.diagnostics.update(
            inner_iters=n_iter, history=len(s_hist), pairs_skipped=skipped, step_size=t, ls_evals=evals - 1
        )
        self._finish_diagnostics()
        return torch.tensor(first_loss)
