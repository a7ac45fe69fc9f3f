"""Generated tasks: DeepOBS's noisy quadratic and Martens' CURVES autoencoder.

``quadratic_deep`` (Schneider, Balles & Hennig 2019) is built exactly as DeepOBS
builds it: ``RandomState(42)`` draws 90 eigenvalues U(0, 1), then 10 U(30, 60),
then a Haar-random rotation R (Diaconis & Shahshahani's subgroup algorithm) from
the same generator; :math:`Q = R^\\top \\mathrm{diag}(\\lambda) R`.  The loss of a
point x is :math:`\\tfrac12 (\\theta - x)^\\top Q (\\theta - x)`; 1,000 training
points are drawn :math:`N(0, 0.6^2 I)` by ``RandomState(42)``, 1,000 test points by
``RandomState(43)`` (hpo2 adds 1,000 validation points from ``RandomState(44)``);
:math:`\\theta` starts at ones.  The training optimum is the mean of the training
points.  DeepOBS baselines (test loss, batch 128, 100 epochs): SGD 87.40,
Momentum 87.05, Adam 87.11.

``curves_autoencoder`` follows Martens (2010, sec. 6) and Hinton &
Salakhutdinov (2006): a 784-400-200-100-50-25-6 encoder of logistic units with a
linear 6-unit code, mirrored decoder, logistic outputs trained with
cross-entropy, weight cost 2e-5, sparse initialisation (15 non-zero incoming
weights per unit); the squared reconstruction error is reported.  Martens'
objective sums the cross-entropy over the 784 pixels (mean over images) and adds
2e-5 / 2 times the squared norm of the weights; the loss here is the per-pixel
mean (``BCEWithLogitsLoss``), so its weight cost is ``CURVES_WEIGHT_COST`` =
2e-5 / 784 -- the same objective divided by 784.  (It was 2e-5 until session 8:
784 times Martens' weight cost, which drove K-FAC's weights to zero and its output
to the mean image; BENCHMARKS.md, "Session 8: K-FAC plateau".)  The data are
CURVES-like: 28x28 images of a smooth curve drawn through three random points,
generated deterministically from the seed.  The original CURVES file is not
redistributable here and its exact rendering is unpublished, so numbers are NOT
comparable to the paper's table (Martens reports 0.058 / 0.059 train / test error
per pixel-sum scale on the original data).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from hpo2.tasks.base import Split, Task, TaskSettings
from hpo2.tasks.losses import QuadraticFormLoss, WeightCost


def haar_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A rotation drawn from the Haar measure on SO(dim) by the subgroup algorithm
    (Diaconis & Shahshahani 1987), consuming ``rng`` in DeepOBS's order."""
    angle = 2 * np.pi * rng.uniform()
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, dim):
        v = rng.normal(size=(d + 1, 1))
        v = v / np.linalg.norm(v)
        e1 = np.zeros((d + 1, 1))
        e1[0, 0] = 1.0
        x = (e1 - v) / np.linalg.norm(e1 - v)  # Householder vector mapping e1 to v
        embedded = np.eye(d + 1)
        embedded[1:, 1:] = rotation
        rotation = embedded - 2 * x @ (x.T @ embedded)
    return -rotation


def deepobs_quadratic_hessian(dim: int = 100) -> np.ndarray:
    rng = np.random.RandomState(42)
    eigenvalues = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    rotation = haar_rotation(dim, rng)
    return rotation.T @ np.diag(eigenvalues) @ rotation


class ThetaMinusX(nn.Module):
    """The quadratic's "model": outputs :math:`\\theta - x` for each point x."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.theta - x


def _points(seed: int, n: int = 1000, dim: int = 100) -> Tensor:
    return torch.tensor(np.random.RandomState(seed).normal(0.0, 0.6, (n, dim)), dtype=torch.float32)


def quadratic_deep(settings: TaskSettings) -> Task:
    """DeepOBS ``quadratic_deep``; batch 128; metric: validation loss, target 90."""
    q = torch.tensor(deepobs_quadratic_hessian(), dtype=torch.float32)
    zeros = torch.zeros(1000)
    return Task(
        name="quadratic_deep", model=ThetaMinusX(100), loss_fn=QuadraticFormLoss(q),
        train=Split(_points(42), zeros), valid=Split(_points(44), zeros), test=Split(_points(43), zeros),
        batch_size=128, metric="loss", metric_fn=None, higher_is_better=False, target=90.0,
        reference="DeepOBS test loss: SGD 87.40, Momentum 87.05, Adam 87.11",
    )  # fmt: skip


def curves_images(n: int, seed: int, size: int = 28, points_per_curve: int = 64, width: float = 0.7) -> Tensor:
    """``n`` images (n, size*size) in [0, 1]: the quadratic through three uniform
    random points (at t = 0, 1/2, 1), drawn with a Gaussian pen of ``width`` pixels.

    Drawing costs about 1 ms an image, and a study builds the task for every trial,
    so the last three image sets (train, validation, test) are cached; each call
    returns its own copy.
    """
    return _draw_curves(n, seed, size, points_per_curve, width).clone()


@functools.lru_cache(maxsize=3)
def _draw_curves(n: int, seed: int, size: int, points_per_curve: int, width: float) -> Tensor:
    rng = np.random.RandomState(seed)
    anchors = rng.uniform(2.0, size - 3.0, size=(n, 3, 2))
    t = np.linspace(0.0, 1.0, points_per_curve)
    basis = np.stack([2 * (t - 0.5) * (t - 1), -4 * t * (t - 1), 2 * t * (t - 0.5)], axis=1)  # Lagrange
    curves = np.clip(np.einsum("pk,nkd->npd", basis, anchors), 0, size - 1)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).reshape(-1, 2)
    images = np.empty((n, size * size), dtype=np.float32)
    for start in range(0, n, 256):
        chunk = curves[start : start + 256]
        d2 = ((chunk[:, :, None, :] - grid[None, None, :, :]) ** 2).sum(-1)
        images[start : start + 256] = np.exp(-d2.min(axis=1) / (2 * width**2))
    return torch.from_numpy(images)


class CurvesSettings(TaskSettings):
    """How many CURVES-like images are generated for each split."""

    size_train: int = Field(default=20000, ge=1)
    """training images generated"""
    size_valid: int = Field(default=5000, ge=1)
    """validation images generated"""
    size_test: int = Field(default=5000, ge=1)
    """test images generated"""


def sparse_init_(linear: nn.Linear, nonzero: int = 15) -> None:
    """Martens' sparse initialisation: ``nonzero`` N(0, 1) incoming weights per unit, zero biases."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        k = min(nonzero, linear.in_features)
        for row in linear.weight:
            row[torch.randperm(linear.in_features)[:k]] = torch.randn(k)


def deep_autoencoder(sizes: tuple[int, ...] = (784, 400, 200, 100, 50, 25, 6)) -> nn.Sequential:
    """Logistic encoder to a linear code, mirrored logistic decoder, output logits."""
    layers: list[nn.Module] = []
    widths = list(sizes) + list(reversed(sizes[:-1]))
    code = len(sizes) - 2
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(a, b)
        sparse_init_(linear)
        layers.append(linear)
        if i != code and i != len(widths) - 2:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def squared_reconstruction_error(outputs: Tensor, targets: Tensor) -> float:
    """Sum over pixels of (sigmoid(z) - x)^2, mean over images (Martens' reported error)."""
    return float(((torch.sigmoid(outputs) - targets) ** 2).sum(1).mean())


CURVES_PIXELS = 28 * 28
#: Martens' 2e-5, scaled to a cross-entropy averaged over the pixels instead of summed (module docstring)
CURVES_WEIGHT_COST = 2e-5 / CURVES_PIXELS


def curves_autoencoder(settings: CurvesSettings) -> Task:
    """The 784-...-6-...-784 autoencoder; batch 1,000; target 10 squared error (validation)."""
    train = curves_images(settings.size_train, 1000 + settings.seed)
    valid = curves_images(settings.size_valid, 2000 + settings.seed)
    test = curves_images(settings.size_test, 3000 + settings.seed)
    model = deep_autoencoder()
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    return Task(
        name="curves_autoencoder", model=model, loss_fn=WeightCost(nn.BCEWithLogitsLoss(), weights, CURVES_WEIGHT_COST),
        train=Split(train, train), valid=Split(valid, valid), test=Split(test, test),
        batch_size=1000, metric="reconstruction_error", metric_fn=squared_reconstruction_error,
        higher_is_better=False, target=10.0, reference="not comparable to Martens (2010): generated data",
    )  # fmt: skip
