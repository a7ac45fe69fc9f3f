"""First-order baselines from ``torch.optim``, declared like hpo2's own optimizers
so that every study compares against them under the same tuning budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from pydantic import Field

from hpo2.optim.settings import FloatRange, OptimizerSettings


class SGDSettings(OptimizerSettings):
    """SGD with (heavy-ball or Nesterov) momentum; DeepOBS's momentum baseline."""

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 1.0, log=True)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.99)] = 0.9
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class AdamSettings(OptimizerSettings):
    """Adam (Kingma & Ba 2015) with its paper defaults; weight decay coupled as in
    ``torch.optim.Adam``."""

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.9999, log=True)] = 0.999
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


class AdamWSettings(AdamSettings):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay, searched."""

    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-5, 0.3, log=True)] = 1e-2


def build_sgd(params: Iterable[Any], s: SGDSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay)


def build_adam(params: Iterable[Any], s: AdamSettings) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if isinstance(s, AdamWSettings) else torch.optim.Adam
    return cls(params, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)
