"""Small optimisation problems with known answers for the optimizer tests."""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from hpo2.optim import BatchClosure

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
    return BatchClosure(model, nn.MSELoss(reduction="sum"), torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))


class Sin(nn.Module):
    """z = sin(w x) with a scalar weight: with MSE to 0, f(w) = sin(w)^2 and the
    Gauss-Newton curvature 2 cos(w)^2 in closed form."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w * x)
