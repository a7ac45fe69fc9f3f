r"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney, AAAI 2021).

Adam with the squared gradient replaced by the squared Hessian diagonal:

.. math::
   D &= \mathbb E[z \odot Hz] \quad\text{(Hutchinson, Rademacher } z\text{; eq. 7)}, \\
   m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
   v_t = \beta_2 v_{t-1} + (1-\beta_2)\, D^{(s)} \odot D^{(s)}, \\
   \theta_{t+1} &= \theta_t - \eta \Big( \frac{\hat m_t}{(\sqrt{\hat v_t})^{k} + \epsilon}
                   + \lambda\, \theta_t \Big),

with bias corrections :math:`\hat m_t, \hat v_t`, Hessian power :math:`k`
(``hessian_power``, eq. 9), decoupled weight decay :math:`\lambda`, and
:math:`D^{(s)}` the **spatially averaged** diagonal: for convolution kernels
(4-D weights) :math:`|D|` is averaged over each kernel's spatial block (eq. 10), as
the authors' code does.  With ``hessian_refresh`` :math:`= r > 1` the diagonal
(and :math:`v`) is recomputed every :math:`r` steps and reused in between, where a
step then costs one gradient instead of a gradient and ``n_probes`` products.
Defaults are those of the paper's image-classification experiments.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.optim.base import Closure
from hpo2.optim.diagonal_base import DiagonalCurvatureOptimizer
from hpo2.optim.moments import adam_denominator, bias_corrected, update_first_moment_, update_second_moment_
from hpo2.optim.settings import FloatRange, IntRange, OptimizerSettings, document_settings


class AdaHessianSettings(OptimizerSettings):
    """Settings of :class:`AdaHessian` (paper defaults)."""

    family: ClassVar[str] = "diagonal curvature"
    reference: ClassVar[str] = "Yao et al., AdaHessian, AAAI 2021 (arXiv 2006.00719)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-3, 1.0, log=True)] = 0.15
    """Learning rate eta."""
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.9
    """Decay of the gradient's moving average (first moment)."""
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.9999, log=True)] = 0.999
    """Decay of the squared Hessian diagonal's moving average (second moment)."""
    eps: Annotated[float, Field(gt=0), FloatRange(1e-8, 1e-2, log=True)] = 1e-4
    """Added to the denominator (sqrt v)^k for stability."""
    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-6, 1e-2, log=True)] = 5e-4
    """Decoupled weight decay lambda: theta <- theta - eta lambda theta."""
    hessian_power: Annotated[float, Field(gt=0, le=1), FloatRange(0.5, 1.0)] = 1.0
    """Exponent k on the root of the second moment (paper eq. 9; 1 is Newton-like, 0.5 Adam-like)."""
    hessian_refresh: Annotated[int, Field(ge=1), IntRange(1, 20, log=True)] = 1
    """Estimate the Hessian diagonal every this many steps and reuse it in between."""
    n_probes: Annotated[int, Field(ge=1)] = 1
    """Rademacher probes per Hutchinson diagonal estimate (each one Hessian-vector product)."""
    seed: int = 0
    """Seed of the probe generator (saved with the optimizer state)."""


def spatial_average(diag: Tensor) -> Tensor:
    """Average |D| over the spatial dimensions of a conv kernel (out, in, kh, kw)."""
    if diag.dim() == 4:
        return diag.abs().mean(dim=(2, 3), keepdim=True).expand_as(diag)
    return diag


@document_settings
class AdaHessian(DiagonalCurvatureOptimizer):
    """AdaHessian as a ``torch.optim.Optimizer``; the closure returns the loss.

    Example:
        On a quadratic whose curvatures differ a hundredfold the loss falls tenfold in 20 steps:

        >>> import torch
        >>> from hpo2.optim import AdaHessian
        >>> scales = torch.tensor([1.0, 10.0, 100.0])
        >>> x = torch.ones(3, requires_grad=True)
        >>> loss = lambda: 0.5 * (scales * x**2).sum()
        >>> opt = AdaHessian([x], lr=0.1, weight_decay=0.0)
        >>> first = float(opt.step(loss))
        >>> for _ in range(20):
        ...     _ = opt.step(loss)
        >>> loss().item() < 0.1 * first
        True
    """

    Settings = AdaHessianSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 0.15,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-4,
        weight_decay: float = 5e-4,
        hessian_power: float = 1.0,
        hessian_refresh: int = 1,
        n_probes: int = 1,
        seed: int = 0,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, hessian_power=hessian_power,
            hessian_refresh=hessian_refresh, n_probes=n_probes, seed=seed
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        loss, prepared = self._prepare_step(closure, "hutchinson")
        if prepared is None:
            return loss
        grads, diag = prepared
        with torch.no_grad():
            for group, p, g, d, st in self._per_parameter(grads, diag):
                b1, b2 = group["beta1"], group["beta2"]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_hessian_diag_sq"] = torch.zeros_like(p)
                    st["step"] = 0
                    st["hessian_step"] = 0
                st["step"] += 1
                update_first_moment_(st["exp_avg"], g, b1)
                if d is not None:
                    st["hessian_step"] += 1
                    update_second_moment_(st["exp_hessian_diag_sq"], spatial_average(d), b2)
                m_hat = bias_corrected(st["exp_avg"], b1, st["step"])
                denom = adam_denominator(
                    st["exp_hessian_diag_sq"], b2, max(st["hessian_step"], 1), group["eps"], group["hessian_power"]
                )
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.addcdiv_(m_hat, denom, value=-group["lr"])
        self._finish_diagnostics()
        return loss
