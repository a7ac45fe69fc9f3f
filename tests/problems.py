"""Small optimisation problems with known answers for the optimizer tests."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from hpo2.optim import BatchClosure
from tests.conftest import make_mlp

L2 = 1e-2


class Quadratic(nn.Module):
    """f(theta) = 1/2 theta^T A theta - b^T theta with a random SPD A (float64)."""

    def __init__(self, n: int, seed: int, cond: float = 100.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
        self.register_buffer("a", q @ torch.diag(torch.logspace(0, np.log10(cond), n, dtype=torch.float64)) @ q.T)
        self.register_buffer("b", torch.randn(n, dtype=torch.float64, generator=gen))
        self.theta = nn.Parameter(torch.randn(n, dtype=torch.float64, generator=gen))

    def forward(self) -> Tensor:
        return 0.5 * self.theta @ self.a @ self.theta - self.b @ self.theta

    def minimizer(self) -> Tensor:
        return torch.linalg.solve(self.a, self.b)


class RegularizedBCE(nn.BCEWithLogitsLoss):
    """Mean logistic loss + L2/2 ||w||^2 (the L2 term does not depend on the outputs)."""

    def __init__(self, weight_param: Tensor) -> None:
        super().__init__()
        self.weight_param = weight_param

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return super().forward(outputs, targets) + 0.5 * L2 * (self.weight_param**2).sum()


def breast_cancer() -> tuple[Tensor, Tensor]:
    data = load_breast_cancer()
    x = StandardScaler().fit_transform(data.data)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(data.target, dtype=torch.float64).unsqueeze(1)


def logistic_problem(device: str | torch.device = "cpu") -> tuple[nn.Module, BatchClosure]:
    x, y = breast_cancer()
    torch.manual_seed(0)
    model = nn.Linear(30, 1).double().to(device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model, BatchClosure(model, RegularizedBCE(model.weight), x.to(device), y.to(device))


def logistic_scipy_optimum() -> tuple[np.ndarray, float]:
    """The L2-regularised logistic regression optimum by SciPy's trust-ncg."""
    x, y = (t.numpy() for t in breast_cancer())
    y = y[:, 0]
    n = len(y)

    def split(v: np.ndarray) -> tuple[np.ndarray, float]:
        return v[:30], v[30]

    def fun(v: np.ndarray) -> float:
        w, b = split(v)
        z = x @ w + b
        return float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * L2 * w @ w)

    def jac(v: np.ndarray) -> np.ndarray:
        w, b = split(v)
        r = 1 / (1 + np.exp(-(x @ w + b))) - y
        return np.concatenate([x.T @ r / n + L2 * w, [r.mean()]])

    def hess(v: np.ndarray) -> np.ndarray:
        w, b = split(v)
        s = 1 / (1 + np.exp(-(x @ w + b)))
        xa = np.hstack([x, np.ones((n, 1))])
        h = xa.T @ (xa * (s * (1 - s))[:, None]) / n
        h[:30, :30] += L2 * np.eye(30)
        return h

    res = scipy.optimize.minimize(fun, np.zeros(31), jac=jac, hess=hess, method="trust-ncg", options={"gtol": 1e-12})
    return res.x, float(res.fun)


class RosenbrockResiduals(nn.Module):
    """Rosenbrock as least squares: r = (10 (y - x^2), 1 - x), f = sum r^2 (minimum at (1, 1))."""

    def __init__(self, start: tuple[float, float] = (-1.2, 1.0)) -> None:
        super().__init__()
        self.xy = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def forward(self, _: Tensor) -> Tensor:
        x, y = self.xy
        return torch.stack([10 * (y - x**2), 1 - x]).unsqueeze(0)


def rosenbrock_closure(model: RosenbrockResiduals) -> BatchClosure:
    return BatchClosure(
        model,
        nn.MSELoss(reduction="sum"),
        torch.zeros(1, 1, dtype=torch.float64),
        torch.zeros(1, 2, dtype=torch.float64),
    )


class Sin(nn.Module):
    """z = sin(w x) with a scalar weight: with MSE to 0, f(w) = sin(w)^2 and the
    Gauss-Newton curvature 2 cos(w)^2 in closed form."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w * x)


def classification_batch(seed: int = 0) -> tuple[Tensor, Tensor]:
    """32 float64 inputs in 5 dimensions with labels in 3 classes (for a ``make_mlp(seed, (5, 8, 3))``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    return x, y


class DiagonalQuadratic(nn.Module):
    """f = 1/2 sum a_i theta_i^2 - b^T theta: Hutchinson's z * Az is exactly a (z_i^2 = 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor([0.5, 2.0, 8.0, 0.05], dtype=torch.float64))
        self.register_buffer("b", torch.tensor([1.0, -1.0, 2.0, 0.3], dtype=torch.float64))
        self.theta = nn.Parameter(torch.tensor([0.2, 0.4, -0.1, 1.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.a * self.theta**2).sum() - self.b @ self.theta


class DenseProbeQuadratic(nn.Module):
    """f = theta^T A theta / 2 - b^T theta with a dense SPD A (rows sum far from the diagonal)."""

    def __init__(self, scale_b: float = 1.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        m = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        self.register_buffer("a", m @ m.T + torch.diag(torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)))
        self.register_buffer("b", scale_b * torch.randn(5, generator=gen, dtype=torch.float64))
        self.theta = nn.Parameter(0.1 * torch.randn(5, generator=gen, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta - self.b @ self.theta


def classification_mlp(seed: int = 0) -> nn.Module:
    """A float64 5-8-3 tanh MLP for :func:`classification_batch`."""
    return make_mlp(seed, (5, 8, 3))
