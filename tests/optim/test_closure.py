"""Closures (hpo2.optim.closure): curvature optimizers take the gradient themselves and refuse a closure that
calls ``backward``; Hessian-free needs a ``BatchClosure``."""

from __future__ import annotations

import pytest
from torch import nn

from hpo2.optim import HessianFree, NewtonCG
from tests.problems import classification_batch, classification_mlp


def test_curvature_optimizers_refuse_closures_that_call_backward():
    x, y = classification_batch()
    model = classification_mlp()
    opt = NewtonCG(model.parameters())

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="without calling loss.backward"):
        opt.step(closure)
    with pytest.raises(ValueError, match="BatchClosure"):
        HessianFree(model.parameters()).step(lambda: nn.functional.cross_entropy(model(x), y))
