"""First-order baselines from ``torch.optim``, declared like hpo2's own optimizers
so that every study compares against them under the same tuning budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from hpo2.optim.settings import FloatRange, OptimizerSettings


class SGDSettings(OptimizerSettings):
    """SGD with (heavy-ball or Nesterov) momentum; DeepOBS's momentum baseline."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Polyak 1964; Sutskever et al., ICML 2013 (Nesterov momentum)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 1.0, log=True)] = 0.01
    """Learning rate."""
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.99)] = 0.9
    """Heavy-ball (or Nesterov) momentum."""
    nesterov: bool = False
    """Use Nesterov momentum."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """L2 weight decay added to the gradient."""


class AdamSettings(OptimizerSettings):
    """Adam (Kingma & Ba 2015) with its paper defaults; weight decay coupled as in
    ``torch.optim.Adam``."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Kingma & Ba, ICLR 2015 (arXiv 1412.6980)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    """Learning rate (Kingma & Ba: 1e-3)."""
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.9
    """Decay of the gradient's moving average."""
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.9999, log=True)] = 0.999
    """Decay of the squared gradient's moving average."""
    eps: Annotated[float, Field(gt=0)] = 1e-8
    """Added to the denominator's square root."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """L2 weight decay added to the gradient (coupled, as torch.optim.Adam)."""


class AdamWSettings(AdamSettings):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay, searched."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Loshchilov & Hutter, ICLR 2019 (arXiv 1711.05101)"

    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-5, 0.3, log=True)] = 1e-2
    """Decoupled weight decay (Loshchilov & Hutter 2019)."""


def build_sgd(params: Iterable[Any], s: SGDSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay)


def build_adam(params: Iterable[Any], s: AdamSettings) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if isinstance(s, AdamWSettings) else torch.optim.Adam
    return cls(params, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)
