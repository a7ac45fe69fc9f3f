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

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.optim.base import Closure
from hpo2.optim.diagonal_base import DiagonalCurvatureOptimizer
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, document_settings
from hpo2.solvers import host_floats


class SophiaSettings(OptimizerSettings):
    """Settings of :class:`Sophia` (paper defaults)."""

    family: ClassVar[str] = "diagonal curvature"
    reference: ClassVar[str] = "Liu et al., Sophia, ICLR 2024 (arXiv 2305.14342)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-4
    """Learning rate eta; also the largest step per coordinate (the clip bounds it)."""
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.965
    """Decay of the gradient's moving average m."""
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.999, log=True)] = 0.99
    """Decay of the curvature diagonal's moving average h (per refresh)."""
    rho: Annotated[float, Field(gt=0), FloatRange(1e-3, 1.0, log=True)] = 0.04
    """Scale of the curvature in the clipped step m / max(rho h, eps) (paper's gamma)."""
    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-5, 0.3, log=True)] = 0.1
    """Decoupled weight decay lambda."""
    eps: Annotated[float, Field(gt=0)] = 1e-15
    """Floor of the denominator max(rho h, eps)."""
    hessian_refresh: Annotated[int, Field(ge=1), IntRange(1, 20, log=True)] = 10
    """Estimate the curvature diagonal every this many steps (paper's k = 10)."""
    estimator: Annotated[Literal["gnb", "hutchinson"], Choice(("gnb", "hutchinson"))] = "gnb"
    """Diagonal estimator: 'gnb' (Gauss-Newton-Bartlett, SophiaG) or 'hutchinson' (SophiaH)."""
    n_probes: Annotated[int, Field(ge=1)] = 1
    """Probes (sampled labels or Rademacher vectors) per diagonal estimate."""
    seed: int = 0
    """Seed of the probe generator (saved with the optimizer state)."""


@document_settings
class Sophia(DiagonalCurvatureOptimizer):
    """Sophia as a ``torch.optim.Optimizer``.  The closure returns the loss; the
    ``gnb`` estimator needs a :class:`~hpo2.optim.closure.BatchClosure`.

    Example:
        The clip bounds each coordinate's move by ``lr``, whatever its curvature:

        >>> import torch
        >>> from hpo2.optim import Sophia
        >>> scales = torch.tensor([1.0, 10.0, 100.0])
        >>> x = torch.ones(3, requires_grad=True)
        >>> opt = Sophia([x], lr=0.1, estimator="hutchinson", weight_decay=0.0)
        >>> _ = opt.step(lambda: 0.5 * (scales * x**2).sum())
        >>> x.detach()
        tensor([0.9000, 0.9000, 0.9000])
    """

    Settings = SophiaSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 1e-4,
        beta1: float = 0.965,
        beta2: float = 0.99,
        rho: float = 0.04,
        weight_decay: float = 0.1,
        eps: float = 1e-15,
        hessian_refresh: int = 10,
        estimator: Literal["gnb", "hutchinson"] = "gnb",
        n_probes: int = 1,
        seed: int = 0,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, beta1=beta1, beta2=beta2, rho=rho, weight_decay=weight_decay, eps=eps,
            hessian_refresh=hessian_refresh, estimator=estimator, n_probes=n_probes, seed=seed
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        loss, prepared = self._prepare_step(closure, self.param_groups[0]["estimator"])
        if prepared is None:
            return loss
        grads, diag = prepared
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
        return loss
