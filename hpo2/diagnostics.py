"""Curvature diagnostics a trial logs at its end: the top Hessian eigenvalue
(Lanczos) and the Hessian trace (Hutchinson) of the loss on a validation batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hpo2.curvature import HessianOperator, hutchinson_trace, top_eigenvalues


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
