r"""Curvature and flatness diagnostics a trial logs at its checkpoints and its end.

* :func:`curvature_summary`: the top Hessian eigenvalue (Lanczos) and the
  Hessian trace (Hutchinson) of the loss on a batch.
* :func:`m_sharpness`: the sharpness SAM minimises (Foret et al. 2021, eq. 1 and
  sec. 4.1 "m-sharpness"): the batch is cut into chunks of ``m`` samples and

  .. math::
     S_m = \frac{1}{K}\sum_{k=1}^{K} \Big[L_k(w + \hat\epsilon_k) - L_k(w)\Big],
     \qquad \hat\epsilon_k = \rho\,\frac{\nabla L_k(w)}{\|\nabla L_k(w)\|},

  where the max over the :math:`\rho`-ball is approximated by SAM's own ascent
  step (one gradient and one forward pass per chunk).  ``adaptive`` uses ASAM's
  ball (:func:`hpo2.optim.sam.ascent_step`).
* :func:`flatness_summary`: all of the above on a sample of the training set plus
  the training metric there and the generalization gap (train vs validation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hpo2.curvature import HessianOperator, hutchinson_trace, top_eigenvalues
from hpo2.optim.sam import ascent_step
from hpo2.tasks import loss_and_metric

SHARPNESS_RHO = 0.05  # Foret et al.'s default radius: the same for every trial, so trials compare
SHARPNESS_M = 128


def curvature_summary(
    model: nn.Module,
    loss_fn: nn.Module,
    x: Tensor,
    y: Tensor,
    lanczos_iter: int = 20,
    trace_probes: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """``{"top_eigenvalue", "hessian_trace"}`` of ``loss_fn(model(x), y)`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            operator = HessianOperator(loss_fn(model(x), y), params)
        generator = torch.Generator().manual_seed(seed)
        top = top_eigenvalues(operator, k=1, n_iter=lanczos_iter, generator=generator)
        trace = hutchinson_trace(operator, trace_probes, generator)
    finally:
        model.train(was_training)
    return {"top_eigenvalue": float(top.eigenvalues[0]), "hessian_trace": trace}


def m_sharpness(
    model: nn.Module,
    loss_fn: nn.Module,
    x: Tensor,
    y: Tensor,
    rho: float = SHARPNESS_RHO,
    m: int = SHARPNESS_M,
    adaptive: bool = False,
) -> float:
    """:math:`S_m` (module docstring), model in eval mode; the parameters are left unchanged."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total, chunks = 0.0, 0
    try:
        for start in range(0, len(x), m):
            xc, yc = x[start : start + m], y[start : start + m]
            with torch.enable_grad():
                loss = loss_fn(model(xc), yc)
                grads = list(torch.autograd.grad(loss, params))
            epsilon = ascent_step(params, grads, rho, adaptive)
            with torch.no_grad():
                saved = [p.detach().clone() for p in params]
                for p, e in zip(params, epsilon):
                    p.add_(e)
                perturbed = loss_fn(model(xc), yc)
                for p, s in zip(params, saved):
                    p.copy_(s)
            total += float(perturbed) - float(loss.detach())
            chunks += 1
    finally:
        model.train(was_training)
    return total / max(chunks, 1)


def flatness_summary(
    model: nn.Module,
    loss_fn: nn.Module,
    metric_fn: Callable[[Tensor, Tensor], float] | None,
    train_x: Tensor,
    train_y: Tensor,
    valid_metric: float,
    higher_is_better: bool,
    curvature_samples: int = 128,
    lanczos_iter: int = 10,
    trace_probes: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    """Flatness of the training loss at the current weights, on a training sample.

    Returns ``top_eigenvalue`` and ``hessian_trace`` (on the first
    ``curvature_samples``), ``m_sharpness`` (:math:`\\rho` = ``SHARPNESS_RHO``,
    chunks of ``SHARPNESS_M``, on the whole sample), ``train_metric`` and
    ``train_loss`` there, and ``generalization_gap``: how much better the metric
    is on the training sample than on validation (train - valid for a metric to
    maximise, valid - train for one to minimise; positive = overfitting).
    """
    summary = curvature_summary(model, loss_fn, train_x[:curvature_samples], train_y[:curvature_samples],
                                lanczos_iter=lanczos_iter, trace_probes=trace_probes, seed=seed)  # fmt: skip
    summary["m_sharpness"] = m_sharpness(model, loss_fn, train_x, train_y)
    summary["train_loss"], summary["train_metric"] = loss_and_metric(model, loss_fn, metric_fn, train_x, train_y)
    gap = summary["train_metric"] - valid_metric
    summary["generalization_gap"] = gap if higher_is_better else -gap
    return summary
