"""Losses the tasks train with, beyond ``torch.nn``'s."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


class WeightCost(nn.Module):
    r"""``output_loss(z, y) + coefficient/2 * sum ||W||^2`` over the given weights.

    The weight cost does not depend on the outputs, so Gauss-Newton products use
    ``output_loss`` alone (see :func:`hpo2.curvature.output_hessian_for`); the cost's
    own curvature, ``coefficient * I`` on the weights, is what damping adds.
    """

    def __init__(self, output_loss: nn.Module, weights: Iterable[Tensor], coefficient: float) -> None:
        super().__init__()
        self.output_loss = output_loss
        self.weights = list(weights)
        self.coefficient = coefficient

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        cost = sum((w**2).sum() for w in self.weights)
        return self.output_loss(outputs, targets) + 0.5 * self.coefficient * cost


class QuadraticFormLoss(nn.Module):
    r"""Mean of :math:`\tfrac12 z_i^\top Q z_i` over the rows of ``outputs`` (targets unused)."""

    def __init__(self, q: Tensor) -> None:
        super().__init__()
        self.register_buffer("q", q)

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return 0.5 * torch.einsum("bi,ij,bj->b", outputs, self.q, outputs).mean()
