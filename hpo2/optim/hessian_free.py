r"""Hessian-free optimisation (Martens 2010; Martens & Sutskever 2012).

Each step minimises the damped Gauss-Newton model

.. math::  q(p) = g^\top p + \tfrac12 p^\top (G + \lambda I) p

by preconditioned CG, with the details that make HF work:

* **Gauss-Newton curvature** :math:`G = J^\top H_L J` (PSD; sec. 4.2), on the whole
  batch or its first ``curvature_fraction`` (a separate, smaller curvature
  minibatch, sec. 4.3; needs a :class:`~hpo2.optim.closure.BatchClosure`).
* **Warm start** :math:`p_0 = \text{cg\_decay} \cdot p_{\text{prev}}` (sec. 4.5,
  decay 0.95 per Martens & Sutskever 2012 sec. 8.7); reset to zero after a
  rejected step.
* **Martens' stopping rule** (sec. 4.4) with :math:`\epsilon = 5\cdot10^{-4}`.
* **Preconditioner** :math:`M = (\mathrm{diag}(\tfrac1N\sum_i \nabla\ell_i^2) + \lambda)^{0.75}`
  from per-sample gradients (sec. 4.7), computed with ``torch.func``.
* **CG backtracking** (sec. 4.6): of the iterates stored at
  :math:`\lceil 1.3^j \rceil`, walk back from the last while the loss keeps falling.
* **Levenberg-Marquardt damping** (sec. 4.1): with the reduction ratio
  :math:`\rho = (f(\theta + p) - f(\theta)) / q(p)`, multiply :math:`\lambda` by
  ``lm_boost`` (3/2) when :math:`\rho < 1/4` and by ``lm_drop`` (2/3) when
  :math:`\rho > 3/4`.  :math:`q(p)` is read off CG's residual, at no extra product.
* **Final line search** (Martens & Sutskever 2012, sec. 8.8): Armijo backtracking
  from ``lr`` with :math:`c = 10^{-2}`, shrinking by 0.8; no acceptable step
  rejects the update.

Dropout makes the curvature products on one batch inconsistent: a warning is
raised when it is active (call ``model.eval()`` or remove it).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from hpo2.curvature import DampedOperator
from hpo2.optim.base import Closure, CurvatureOptimizer
from hpo2.optim.closure import BatchClosure, require_batch_closure
from hpo2.optim.settings import FloatRange, IntRange, OptimizerSettings
from hpo2.solvers import armijo_backtracking, cg


class HessianFreeSettings(OptimizerSettings):
    """Settings of :class:`HessianFree`; defaults from Martens (2010) and
    Martens & Sutskever (2012)."""

    lr: Annotated[float, Field(gt=0)] = 1.0
    damping: Annotated[float, Field(ge=0), FloatRange(1e-4, 100.0, log=True)] = 1.0
    lm_boost: Annotated[float, Field(gt=1)] = 1.5
    lm_drop: Annotated[float, Field(gt=0, lt=1)] = 2.0 / 3.0
    cg_max_iter: Annotated[int, Field(ge=1), IntRange(10, 250, log=True)] = 250
    cg_decay: Annotated[float, Field(ge=0, le=1), FloatRange(0.5, 0.99)] = 0.95
    martens_eps: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-2, log=True)] = 5e-4
    curvature_fraction: Annotated[float, Field(gt=0, le=1), FloatRange(0.1, 1.0, log=True)] = 1.0
    preconditioner: bool = True
    preconditioner_exponent: Annotated[float, Field(ge=0, le=1)] = 0.75
    backtracking: bool = True
    ls_c1: Annotated[float, Field(gt=0, lt=1)] = 1e-2
    ls_shrink: Annotated[float, Field(gt=0, lt=1)] = 0.8
    max_ls_evals: Annotated[int, Field(ge=1)] = 60


def _per_sample_grad_squares(batch: BatchClosure, params: list[Tensor], chunk: int = 64) -> Tensor:
    r""":math:`\frac1N \sum_i \nabla\ell_i \odot \nabla\ell_i` (flat) with ``torch.func.vmap``."""
    model = batch.model
    names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
    detached = {n: p.detach() for n, p in model.named_parameters() if n in names}
    buffers = dict(model.named_buffers())

    def sample_loss(ps: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = torch.func.functional_call(model, {**buffers, **ps}, (x.unsqueeze(0),))
        return batch.loss_fn(out, y.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0), randomness="different")
    order = {id(p): n for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(t) for n, t in detached.items()}
    for start in range(0, batch.batch_size, chunk):  # chunks bound the N x P memory
        grads = per_sample(detached, batch.inputs[start : start + chunk], batch.targets[start : start + chunk])
        for n in total:
            total[n] += (grads[n] ** 2).sum(0)
    return torch.cat([total[order[id(p)]].reshape(-1) for p in params]) / batch.batch_size


class HessianFree(CurvatureOptimizer):
    """Martens' Hessian-free optimizer as a ``torch.optim.Optimizer``.

    ``step`` takes a :class:`~hpo2.optim.closure.BatchClosure` (the Gauss-Newton
    product needs the outputs and the loss function).
    """

    Settings = HessianFreeSettings

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        group = self.param_groups[0]
        state = self.global_state
        batch = require_batch_closure(closure, "HessianFree", "Gauss-Newton curvature")
        damping = float(state.get("damping", group["damping"]))
        self._start_diagnostics(damping=damping)
        loss, grads, operator = self._gradient_and_curvature(batch, "ggn", group["curvature_fraction"])
        g = self._flatten(grads)
        g_norm = float(g.norm())
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics(operator)
            return torch.tensor(loss)

        preconditioner = None
        if group["preconditioner"]:
            squares = _per_sample_grad_squares(batch, self._params)
            self._count("n_grad")
            preconditioner = (squares + damping) ** group["preconditioner_exponent"]

        previous = state.get("cg_solution")
        x_start = group["cg_decay"] * previous if previous is not None else None
        result = cg(
            DampedOperator(operator, damping).mv,
            -g,
            x_start,
            max_iter=group["cg_max_iter"],
            tol=0.0,
            preconditioner=preconditioner,
            martens_eps=group["martens_eps"],
            store_iterates=group["backtracking"],
        )
        self.diagnostics.update(cg_iters=result.n_iter, cg_stop=result.stop_reason,
                                negative_curvature=int(result.negative_curvature is not None))

        x0 = self._flat_params()

        def loss_at(p: Tensor) -> float:
            self._set_flat_params(x0 + p)
            return self._loss_value(batch)

        step_p, quad, new_loss = result.x, result.quad_value, None
        if group["backtracking"] and result.iterates:
            step_p, quad, new_loss = self._backtrack(result, loss_at)
        if new_loss is None:
            new_loss = loss_at(step_p)

        rho = (new_loss - loss) / quad if quad < 0 and math.isfinite(new_loss) else -math.inf
        if rho < 0.25:
            damping *= group["lm_boost"]
        elif rho > 0.75:
            damping *= group["lm_drop"]
        state["damping"] = damping

        slope = float(torch.dot(g, step_p))
        accepted_t = 0.0
        if slope < 0:
            if math.isfinite(new_loss) and new_loss <= loss + group["ls_c1"] * group["lr"] * slope:
                accepted_t, n_ls = group["lr"], 0  # the backtracked iterate already passes Armijo
            else:
                ls = armijo_backtracking(
                    lambda t: loss_at(t * step_p), loss, slope, step0=group["lr"],
                    c1=group["ls_c1"], shrink=group["ls_shrink"], max_evals=group["max_ls_evals"],
                )
                accepted_t, n_ls = ls.step, ls.n_evals
        else:
            n_ls = 0
        self._move_to(x0, accepted_t, step_p)
        if accepted_t == 0.0:
            state["cg_solution"] = None  # a rejected step must not warm-start the next solve
            self.diagnostics["status"] = "rejected"
        else:
            state["cg_solution"] = step_p.detach().clone()
        self.diagnostics.update(
            reduction_ratio=rho if math.isfinite(rho) else -1e30,
            damping_next=damping,
            step_size=accepted_t,
            ls_evals=n_ls,
            step_norm=accepted_t * float(step_p.norm()) if accepted_t else 0.0,
        )
        self._finish_diagnostics(operator)
        return torch.tensor(loss)

    @staticmethod
    def _backtrack(result, loss_at) -> tuple[Tensor, float, float]:  # type: ignore[no-untyped-def]
        """Martens (2010) sec. 4.6: from the last stored CG iterate walk back while
        the loss falls; return the chosen iterate, its model value and its loss."""
        iterates = result.iterates
        best = len(iterates) - 1
        best_loss = loss_at(iterates[best][1])
        for j in range(len(iterates) - 2, -1, -1):
            candidate = loss_at(iterates[j][1])
            if not candidate < best_loss:
                break
            best, best_loss = j, candidate
        i, x = iterates[best]
        return x, result.quad_values[i], best_loss
