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

from dataclasses import replace
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import HessianOperator
from hpo2.optim.base import Closure, CurvatureOptimizer, ParameterRay
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, document_settings
from hpo2.solvers import FixedStep, LineSearch, host_floats, make_line_search


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


def two_loop_direction(
    g: Tensor, s_hist: list[Tensor], y_hist: list[Tensor], rho_hist: list[float], gamma: float
) -> Tensor:
    r""":math:`-H_k g` by the two-loop recursion (Nocedal & Wright, Alg. 7.4); the
    coefficients :math:`\alpha_i, \beta_i` stay 0-d tensors on the device."""
    q = -g
    alphas = []
    for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
        alpha = rho * torch.dot(s, q)
        q = q - alpha * y
        alphas.append(alpha)
    r = gamma * q
    for s, y, rho, alpha in zip(s_hist, y_hist, rho_hist, reversed(alphas)):
        beta = rho * torch.dot(y, r)
        r = r + (alpha - beta) * s
    return r


def _pair_products(
    g: Tensor, prev_g: Tensor | None, d: Tensor | None, t: float | None
) -> tuple[Tensor | float, Tensor | float]:
    r""":math:`s^\top y` and :math:`y^\top y` of the pair the next iteration adds
    (zeros when there is none yet), to be read with the step's other scalars."""
    if prev_g is None or d is None or t is None:
        return 0.0, 0.0
    y = g - prev_g
    return torch.dot(y, d * t), torch.dot(y, y)


@document_settings
class LBFGS(CurvatureOptimizer):
    r"""L-BFGS as a ``torch.optim.Optimizer`` (one parameter group).

    Host reads per inner iteration: the slope :math:`g^\top d` (one), the line
    search's trial points (one each) and the stopping tests with the next pair's
    :math:`s^\top y, y^\top y` (one); the recursion itself reads nothing.

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
        curvature, gg = host_floats(torch.dot(g, op.mv(g)), torch.dot(g, g))
        self._count("n_grad", cost=self._hessian_gradient_price(closure))
        self._count("n_hvp", cost=self._product_price(closure, op, lambda: op.mv(g)))
        return gg / curvature if curvature > 0 else None

    def _add_pair(self, g: Tensor, ys: float, yy: float) -> bool:
        """Append the newest pair :math:`(s, y)` unless :math:`s^\\top y \\le 10^{-10}`
        (it would lose positive definiteness); keep at most ``history_size``."""
        state = self.global_state
        if ys <= 1e-10:
            return False
        s_hist, y_hist, rho_hist = state["s_hist"], state["y_hist"], state["rho_hist"]
        if len(s_hist) == self.param_groups[0]["history_size"]:
            s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        s_hist.append(state["d"] * state["t"])
        y_hist.append(g - state["prev_g"])
        rho_hist.append(1.0 / ys)
        state["gamma"] = ys / yy
        return True

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        group = self.param_groups[0]
        max_iter = group["max_iter"]
        max_eval = group["max_eval"] if group["max_eval"] is not None else max_iter * 5 // 4
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        state = self.global_state
        for key, empty in (("func_evals", 0), ("n_iter", 0), ("s_hist", []), ("y_hist", []), ("rho_hist", [])):
            state.setdefault(key, empty)
        self._start_diagnostics()

        allow_backward = group["initial_scaling"] == "secant"
        first_loss_t, g = self._value_and_grad(closure, allow_backward)
        assert closure is not None, "the call above raises on a missing closure"
        ys_t, yy_t = _pair_products(g, state.get("prev_g"), state.get("d"), state.get("t"))
        loss, g_norm, g_max, g_l1, ys, yy = host_floats(
            first_loss_t, g.norm(), g.abs().max(), g.abs().sum(), ys_t, yy_t
        )
        state["func_evals"] += 1
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics()
            return first_loss_t
        if g_max <= tol_grad:
            self.diagnostics["status"] = "converged"
            self._finish_diagnostics()
            return first_loss_t

        search = make_line_search(group["line_search"], c1=group["ls_c1"], c2=group["ls_c2"])
        evals, skipped, n_iter = 1, 0, 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            d, t, added = self._direction(closure, g, ys, yy, g_l1)
            skipped += not added
            state.update(d=d, t=t, prev_g=g.clone(), prev_loss=loss)
            (slope,) = host_floats(torch.dot(g, d))
            if slope > -tol_change:
                break
            moved_loss, g, t, ls_evals = self._move(
                closure, search, d, t, loss, g, slope, n_iter, max_eval - evals
            )
            state["t"] = t
            evals += ls_evals
            state["func_evals"] += ls_evals
            if n_iter == max_iter or evals >= max_eval:
                break
            ys_t, yy_t = _pair_products(g, state["prev_g"], d, t)
            loss, g_max, step_max, ys, yy = host_floats(moved_loss, g.abs().max(), (d * t).abs().max(), ys_t, yy_t)
            if g_max <= tol_grad or step_max <= tol_change or abs(loss - state["prev_loss"]) < tol_change:
                break

        self.diagnostics.update(
            inner_iters=n_iter, history=len(state["s_hist"]), pairs_skipped=skipped, step_size=state["t"],
            ls_evals=evals - 1,
        )
        self._finish_diagnostics()
        return first_loss_t

    def _direction(self, closure: Closure, g: Tensor, ys: float, yy: float, g_l1: float) -> tuple[Tensor, float, bool]:
        """The direction :math:`-H_k g` (steepest descent on the very first iteration),
        the first trial step, and whether the newest pair was added to the history."""
        group, state = self.param_groups[0], self.global_state
        hvp = group["initial_scaling"] == "hvp"
        if state["n_iter"] == 1:
            state["s_hist"].clear(), state["y_hist"].clear(), state["rho_hist"].clear()
            state["gamma"] = 1.0
            t = min(1.0, 1.0 / g_l1) * group["lr"]
            if hvp:
                t = (self._hvp_gamma(closure, g) or t / group["lr"]) * group["lr"]
            return -g, t, True
        added = self._add_pair(g, ys, yy)
        gamma = float(state.get("gamma", 1.0))
        if hvp:
            gamma = self._hvp_gamma(closure, g) or gamma
            state["gamma"] = gamma
        return two_loop_direction(g, state["s_hist"], state["y_hist"], state["rho_hist"], gamma), group["lr"], added

    def _move(
        self, closure: Closure, search: LineSearch, d: Tensor, t: float, loss: float, g: Tensor, slope: float,
        n_iter: int, evals_left: int,
    ) -> tuple[Tensor | float, Tensor, float, int]:
        """Move along ``d`` by the line search (or the fixed step ``t``); return the new
        loss, gradient, step and evaluations used."""
        allow_backward = self.param_groups[0]["initial_scaling"] == "secant"
        x0 = self._flat_params()
        ray = ParameterRay(self, x0, d, lambda: self._value_and_grad(closure, allow_backward)[0],
                           lambda: self._value_and_grad(closure, allow_backward))
        if isinstance(search, FixedStep):
            self._move_to(x0, t, d)
            if n_iter == self.param_groups[0]["max_iter"]:
                return loss, g, t, 0
            loss_t, g = self._value_and_grad(closure, allow_backward)
            return loss_t, g, t, 1  # read with the stopping tests
        ls = replace(search, max_evals=max(1, evals_left)).search(ray, loss, slope, t)
        self._move_to(x0, ls.step, d)
        if ls.step in ray.evaluated:
            loss, g = ls.value, ray.evaluated[ls.step][1]
        return loss, g, ls.step, ls.n_evals
