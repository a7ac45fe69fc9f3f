r"""Loss Hessians on the model outputs, :math:`u \mapsto H_L u`, for Gauss-Newton products.

Closed forms (Schraudolph 2002, sec. 3; Martens 2010, sec. 4.2 "matching loss"):

* mean-squared error :math:`L = c \sum_i (z_i - y_i)^2`:
  :math:`H_L = 2c\, I`, with :math:`c = 1/\text{numel}` for ``reduction="mean"``.
* softmax cross-entropy :math:`\ell(z, y) = -\log \mathrm{softmax}(z)_y` per sample:
  :math:`H_\ell = \mathrm{diag}(p) - p p^\top` with :math:`p = \mathrm{softmax}(z)`,
  independent of the label (also with label smoothing); averaged over the samples
  that are not ``ignore_index`` for ``reduction="mean"``.
* sigmoid / binary cross-entropy on logits: :math:`H = \mathrm{diag}(\sigma(z)(1-\sigma(z)))`.

Every closed form is PSD, so the Gauss-Newton matrix built from it is PSD.  Any
other loss goes through :func:`generic_output_hessian`, an exact double-backward
Hessian of the loss with respect to (detached) outputs; it is PSD only when that
loss is convex in the outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

OutputHessian = Callable[[Tensor], Tensor]

_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; allowed: {', '.join(_REDUCTIONS)}")


def mse_output_hessian(outputs: Tensor, reduction: str = "mean") -> OutputHessian:
    """:math:`H_L u = 2c\\, u` for ``torch.nn.functional.mse_loss(outputs, y, reduction)``."""
    _check_reduction(reduction)
    scale = 2.0 / outputs.numel() if reduction == "mean" else 2.0
    return lambda u: scale * u


def cross_entropy_output_hessian(
    logits: Tensor, targets: Tensor | None = None, reduction: str = "mean", ignore_index: int = -100
) -> OutputHessian:
    """:math:`H u = (p \\odot u - p\\,(p^\\top u)) / N` per sample, class dimension 1 (as
    ``torch.nn.functional.cross_entropy``); samples whose target is ``ignore_index``
    contribute nothing."""
    _check_reduction(reduction)
    p = torch.softmax(logits.detach(), dim=1)
    if targets is not None and targets.dtype in (torch.int64, torch.int32) and targets.dim() == logits.dim() - 1:
        keep = (targets != ignore_index).unsqueeze(1).to(p.dtype)
        count = keep.sum()
    else:
        keep = None
        count = torch.tensor(float(logits.numel() // logits.shape[1]), dtype=p.dtype, device=p.device)
    scale = 1.0 / count.clamp_min(1.0) if reduction == "mean" else torch.ones((), dtype=p.dtype, device=p.device)

    def apply(u: Tensor) -> Tensor:
        hu = p * u - p * (p * u).sum(dim=1, keepdim=True)
        if keep is not None:
            hu = hu * keep
        return hu * scale

    return apply


def bce_with_logits_output_hessian(logits: Tensor, reduction: str = "mean") -> OutputHessian:
    """:math:`H u = \\sigma(z)(1 - \\sigma(z)) \\odot u\\, c` for
    ``torch.nn.functional.binary_cross_entropy_with_logits``."""
    _check_reduction(reduction)
    s = torch.sigmoid(logits.detach())
    diag = s * (1 - s)
    if reduction == "mean":
        diag = diag / logits.numel()
    return lambda u: diag * u


def generic_output_hessian(
    loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor
) -> OutputHessian:
    """Exact :math:`H_L u` for any twice-differentiable scalar ``loss_fn(outputs, targets)``
    by double backward on a detached copy of the outputs (graph built once)."""
    z = outputs.detach().requires_grad_(True)
    loss = loss_fn(z, targets)
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    (grad_z,) = torch.autograd.grad(loss, z, create_graph=True)
    if grad_z.grad_fn is None:  # loss linear in the outputs
        return lambda u: torch.zeros_like(u)

    def apply(u: Tensor) -> Tensor:
        (hu,) = torch.autograd.grad(grad_z, z, grad_outputs=u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if hu is None else hu

    return apply


def output_hessian_for(
    loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor
) -> OutputHessian:
    """Pick the closed form for ``nn.MSELoss``, ``nn.CrossEntropyLoss`` (no class
    weights) and ``nn.BCEWithLogitsLoss`` (no weights) modules; else the generic path.

    A loss that adds terms independent of the outputs (a weight cost) exposes its
    output-dependent part as ``loss_fn.output_loss``: the Hessian on the outputs is
    that part's.
    """
    loss_fn = getattr(loss_fn, "output_loss", loss_fn)
    if isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction in _REDUCTIONS:
        return mse_output_hessian(outputs, loss_fn.reduction)
    if isinstance(loss_fn, nn.CrossEntropyLoss) and loss_fn.weight is None and loss_fn.reduction in _REDUCTIONS:
        return cross_entropy_output_hessian(outputs, targets, loss_fn.reduction, loss_fn.ignore_index)
    if (
        isinstance(loss_fn, nn.BCEWithLogitsLoss)
        and loss_fn.weight is None
        and loss_fn.pos_weight is None
        and loss_fn.reduction in _REDUCTIONS
    ):
        return bce_with_logits_output_hessian(outputs, loss_fn.reduction)
    return generic_output_hessian(loss_fn, outputs, targets)
