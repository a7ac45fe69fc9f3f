"""Flatness diagnostics (hpo2.diagnostics) against dense float64 references: the
top Hessian eigenvalue and trace against the explicit Hessian, m-sharpness against
a direct computation, the generalization gap against its definition."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hpo2.diagnostics import flatness_summary, m_sharpness
from hpo2.tasks.base import accuracy
from tests.conftest import make_mlp


def _problem(seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    model = make_mlp(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(50, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (50,), generator=gen)
    return model, x, y


def _flat_loss(model: nn.Module, x: Tensor, y: Tensor):  # type: ignore[no-untyped-def]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(flat: Tensor) -> Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[name] = flat[offset : offset + n].view(shape)
            offset += n
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return loss


def test_flatness_equals_the_dense_hessian_and_the_definitions(seed: int) -> None:
    model, x, y = _problem(seed)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hessian = torch.autograd.functional.hessian(_flat_loss(model, x, y), w)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    probes = 200
    s = flatness_summary(model, nn.CrossEntropyLoss(), accuracy, x, y, valid_metric=0.25, higher_is_better=True,
                         curvature_samples=len(x), lanczos_iter=w.numel(), trace_probes=probes, seed=seed)  # fmt: skip
    assert s["top_eigenvalue"] == pytest.approx(float(eigenvalues[-1]), rel=1e-6)
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    std = math.sqrt(2 * float((off_diagonal**2).sum()) / probes)  # Rademacher Hutchinson variance
    assert abs(s["hessian_trace"] - float(torch.trace(hessian))) < 4 * std + 1e-12
    train_metric = accuracy(model(x), y)
    assert s["train_metric"] == pytest.approx(train_metric)
    assert s["generalization_gap"] == pytest.approx(train_metric - 0.25)
    lower = flatness_summary(model, nn.CrossEntropyLoss(), None, x, y, valid_metric=2.0, higher_is_better=False,
                             curvature_samples=8, lanczos_iter=3, trace_probes=1)  # fmt: skip
    assert lower["train_metric"] == lower["train_loss"]
    assert lower["generalization_gap"] == pytest.approx(2.0 - lower["train_loss"])


@pytest.mark.parametrize("m", [16, 50])
def test_m_sharpness_equals_a_direct_computation(m: int, seed: int) -> None:
    model, x, y = _problem(seed)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    rho = 0.05
    values = []
    for start in range(0, len(x), m):  # chunks of m (the last one shorter), equally weighted
        loss = _flat_loss(model, x[start : start + m], y[start : start + m])
        g = torch.func.grad(loss)(w)
        values.append(float(loss(w + rho * g / g.norm()) - loss(w)))
    expected = sum(values) / len(values)
    got = m_sharpness(model, nn.CrossEntropyLoss(), x, y, rho=rho, m=m)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-14)
    assert got > 0
    assert model.training  # mode restored
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)  # parameters restored exactly
