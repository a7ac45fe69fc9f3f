r"""Adam's moments and bias correction (Kingma & Ba, "Adam: a method for stochastic
optimization", ICLR 2015, Algorithm 1), written once for every method with an Adam
part: K-FAC's parameters it cannot factor, Shampoo's grafting, SOAP (Adam in
Shampoo's eigenbasis) and AdaHessian (the Hessian diagonal in place of the gradient).

.. math::
   m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
   v_t = \beta_2 v_{t-1} + (1-\beta_2)\, s_t \odot s_t, \\
   \hat m_t &= \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
   \theta_t = \theta_{t-1} - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon},

with :math:`s_t = g_t` for Adam itself (:func:`adam_step_`), a rotated gradient in
SOAP and the Hessian diagonal in AdaHessian, which also raises
:math:`\sqrt{\hat v_t}` to its Hessian power (:func:`adam_denominator`).  Kingma &
Ba's cheaper order (end of sec. 2) folds both corrections into the step size,
:math:`\eta_t = \eta \sqrt{1-\beta_2^t} / (1-\beta_1^t)` with :math:`\epsilon` added
to the uncorrected :math:`\sqrt{v_t}` (:func:`corrected_step_size`; SOAP's form).

The moments are updated in place; the state keys stay each optimizer's own.
"""

from __future__ import annotations

import math

from torch import Tensor


def update_first_moment_(exp_avg: Tensor, grad: Tensor, beta1: float) -> Tensor:
    r""":math:`m \leftarrow \beta_1 m + (1-\beta_1) g`, in place; returns ``exp_avg``."""
    return exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)


def update_second_moment_(exp_avg_sq: Tensor, value: Tensor, beta2: float) -> Tensor:
    r""":math:`v \leftarrow \beta_2 v + (1-\beta_2)\, s \odot s`, in place; returns ``exp_avg_sq``."""
    return exp_avg_sq.mul_(beta2).addcmul_(value, value, value=1 - beta2)


def bias_corrected(average: Tensor, beta: float, count: int) -> Tensor:
    r""":math:`x / (1-\beta^t)`: an exponential average started at zero, debiased after
    ``count`` :math:`= t` updates (a new tensor)."""
    return average / (1 - beta**count)


def adam_denominator(exp_avg_sq: Tensor, beta2: float, count: int, eps: float, power: float = 1.0) -> Tensor:
    r""":math:`\sqrt{\hat v_t}^{\,k} + \epsilon` (a new tensor), with :math:`k` = ``power``
    (1 for Adam; AdaHessian's ``hessian_power``)."""
    root = bias_corrected(exp_avg_sq, beta2, count).sqrt()
    if power != 1.0:
        root = root.pow(power)
    return root.add_(eps)


def corrected_step_size(lr: float, beta1: float, beta2: float, count: int) -> float:
    r""":math:`\eta \sqrt{1-\beta_2^t} / (1-\beta_1^t)`: both bias corrections in the step
    size, for :math:`m_t / (\sqrt{v_t} + \epsilon)` (Kingma & Ba, end of sec. 2)."""
    return lr * math.sqrt(1 - beta2**count) / (1 - beta1**count)


def adam_step_(
    param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, count: int, lr: float, beta1: float,
    beta2: float, eps: float,
) -> None:
    r"""One Adam step on ``param`` in place (``count`` :math:`= t`, this step's number,
    from 1): both moments take ``grad``, then :math:`\theta \leftarrow \theta - \eta\,
    \hat m_t / (\sqrt{\hat v_t} + \epsilon)`.  Coupled weight decay is the caller's (add
    it to ``grad``), decoupled weight decay too (scale ``param``)."""
    update_first_moment_(exp_avg, grad, beta1)
    update_second_moment_(exp_avg_sq, grad, beta2)
    param.addcdiv_(bias_corrected(exp_avg, beta1, count), adam_denominator(exp_avg_sq, beta2, count, eps), value=-lr)
