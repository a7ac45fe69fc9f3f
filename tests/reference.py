"""Dense float64 references built with torch.autograd.functional (independent of hpo2)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call


def split(flat: Tensor, model: nn.Module) -> dict[str, Tensor]:
    out, offset = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def dense_hessian(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    def f(flat: Tensor) -> Tensor:
        return loss_fn(functional_call(model, split(flat, model), (x,)), y)

    return torch.autograd.functional.hessian(f, flat_params(model))


def dense_ggn(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Explicit J^T H_L J."""
    theta = flat_params(model)

    def outputs(flat: Tensor) -> Tensor:
        return functional_call(model, split(flat, model), (x,))

    z = outputs(theta).detach()
    jac = torch.autograd.functional.jacobian(outputs, theta).reshape(z.numel(), -1)
    h_out = torch.autograd.functional.hessian(lambda zz: loss_fn(zz.view_as(z), y), z.reshape(-1))
    return jac.T @ h_out @ jac
