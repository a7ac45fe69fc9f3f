r"""Sophia (Liu, Li, Hall, Liang & Ma, "Sophia: a scalable stochastic second-order
optimizer for language model pre-training", ICLR 2024; arXiv 2305.14342).

A clipped, diagonally preconditioned momentum step (Algorithm 3):

.. math::
   m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \\
   h_t &= \beta_2 h_{t-k} + (1-\beta_2)\, \hat h_t \quad\text{every } k \text{ steps (else } h_t = h_{t-1}), \\
   \theta_{t+1} &= (1 - \eta\lambda)\,\theta_t
     - \eta\, \mathrm{clip}\!\Big(\frac{m_t}{\max(\rho\, h_t, \epsilon)}, 1\Big),

with :math:`\mathrm{clip}(x, 1) = \max(\min(x, 1), -1)` elementwise, :math:`k` =
``hessian_refresh`` (10 in the paper), and :math:`\hat h` from the
Gauss-Newton-Bartlett estimator (SophiaG, the paper's default: labels sampled from
the model, :math:`B\,\hat g \odot \hat g`) or Hutchinson's (SophiaH).  The clip
bounds every coordinate's step by :math:`\eta`, which guards against negative or
tiny curvature estimates.  Defaults are the authors' GPT-2 settings.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from hpo2.optim.base import Closure
from hpo2.optim.diagonal_base import DiagonalCurvatureOptimizer
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings
from hpo2.solvers import host_floats


class SophiaSettings(OptimizerSettings):
    """Settings of :class:`Sophia` (paper defaults)."""

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-4
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.965
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.999, log=True)] = 0.99
    rho: Annotated[float, Field(gt=0), FloatRange(1e-3, 1.0, log=True)] = 0.04
    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-5, 0.3, log=True)] = 0.1
    eps: Annotated[float, Field(gt=0)] = 1e-15
    hessian_refresh: Annotated[int, Field(ge=1), IntRange(1, 20, log=True)] = 10
    estimator: Annotated[Literal["gnb", "hutchinson"], Choice(("gnb", "hutchinson"))] = "gnb"
    n_probes: Annotated[int, Field(ge=1)] = 1
    seed: int = 0


class Sophia(DiagonalCurvatureOptimizer):
    """Sophia as a ``torch.optim.Optimizer``.  The closure returns the loss; the
    ``gnb`` estimator needs a :class:`~hpo2.optim.closure.BatchClosure`."""

    Settings = SophiaSettings

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        prepared = self._prepare_step(closure, self.param_groups[0]["estimator"])
        if prepared is None:
            return torch.tensor(self.diagnostics["loss"])
        loss, grads, diag = prepared
        clipped: Tensor | int = 0
        total = 0
        with torch.no_grad():
            for group, p, g, h_new, st in self._per_parameter(grads, diag):
                b1, b2 = group["beta1"], group["beta2"]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p)
                    st["hessian"] = torch.zeros_like(p)
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                if h_new is not None:
                    st["hessian"].mul_(b2).add_(h_new, alpha=1 - b2)
                ratio = st["exp_avg"].abs() / (group["rho"] * st["hessian"]).clamp_min(group["eps"])
                clipped = clipped + (ratio >= 1).sum()  # read once, below
                total += ratio.numel()
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcmul_(st["exp_avg"].sign(), ratio.clamp_max(1.0), value=-group["lr"])
        self.diagnostics["clip_fraction"] = host_floats(clipped)[0] / max(total, 1)
        self._finish_diagnostics()
        return torch.tensor(loss)
