"""Generated tasks (hpo2.tasks.synthetic): deterministic generators, DeepOBS's quadratic built as DeepOBS builds
it, and a full-batch Newton step landing on its optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hpo2.optim import NewtonCG
from hpo2.optim.closure import BatchClosure
from hpo2.tasks import build_task
from hpo2.tasks.synthetic import curves_images, deepobs_quadratic_hessian, haar_rotation


def test_generators_are_deterministic():
    a, b = curves_images(20, seed=5), curves_images(20, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, curves_images(20, seed=6))
    assert a.shape == (20, 784) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert (a > 0.5).sum(1).min() > 5  # every image shows a curve
    m1, m2 = build_task("mnist1d_mlp"), build_task("mnist1d_mlp")
    assert torch.equal(m1.train.x, m2.train.x) and len(m1.train) + len(m1.valid) == 4000 and len(m1.test) == 1000


def test_deepobs_quadratic_is_built_as_deepobs_builds_it():
    rng = np.random.RandomState(42)
    eigs = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    rotation = haar_rotation(100, rng)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(100), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    q = deepobs_quadratic_hessian()
    np.testing.assert_allclose(q, q.T, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(q), np.sort(eigs), atol=1e-10)
    task = build_task("quadratic_deep")
    np.testing.assert_allclose(task.train.x.numpy(), np.random.RandomState(42).normal(0, 0.6, (1000, 100)), rtol=1e-6)
    assert torch.equal(task.model.theta.detach(), torch.ones(100))


def test_full_batch_newton_step_lands_on_the_quadratic_optimum():
    task = build_task("quadratic_deep")
    task.model.double()
    task.loss_fn.double()
    x, y = task.train.x.double(), task.train.y.double()
    opt = NewtonCG(task.model.parameters(), damping=0.0, cg_max_iter=200, cg_tol=1e-12, globalization="none")
    opt.step(BatchClosure(task.model, task.loss_fn, x, y))
    torch.testing.assert_close(task.model.theta.detach(), x.mean(0), rtol=1e-8, atol=1e-9)


def test_curves_loss_is_martens_objective_divided_by_the_pixel_count() -> None:
    """Martens (2010): cross-entropy summed over the 784 pixels, mean over images, plus
    2e-5/2 ||W||^2. The task averages over pixels, so its loss times 784 is that objective."""
    task = build_task("curves_autoencoder", {"size_train": 8, "size_valid": 4, "size_test": 4, "batch_size": 8})
    model = task.model.double()
    x = task.train.x[:8].double()
    outputs = model(x)
    summed = nn.functional.binary_cross_entropy_with_logits(outputs, x, reduction="sum") / len(x)
    weights = sum((m.weight**2).sum() for m in model if isinstance(m, nn.Linear))
    martens = summed + 0.5 * 2e-5 * weights
    assert torch.allclose(task.loss_fn(outputs, x) * 784, martens, rtol=1e-12, atol=0)
