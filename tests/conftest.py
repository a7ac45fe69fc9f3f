"""Shared fixtures: small float64 networks and dense references for curvature tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
    ),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[0, 1, 2])
def seed(request: pytest.FixtureRequest) -> int:
    return request.param


def make_mlp(seed: int, sizes: tuple[int, ...] = (4, 5, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).double()


def make_cnn(seed: int, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, kernel_size=3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, n_out),
    ).double()
