r"""Hessian spectrum tools: top eigenvalues, trace, spectral density.

These are the curvature diagnostics a trial logs (as PyHessian, Yao et al. 2020,
does for neural networks), all matrix-free on a :class:`LinearOperator` (any
:class:`~hpo2.curvature.products.CurvatureOperator`, or :class:`MatrixOperator`
for a dense matrix):

* :func:`top_eigenvalues` -- Lanczos with full reorthogonalisation (Golub & Van
  Loan, sec. 10.1): the Ritz values of the tridiagonal :math:`T_m = Q_m^\top A Q_m`
  converge first to the extreme eigenvalues; or the power method with deflation
  (largest magnitude first).
* :func:`hutchinson_trace` -- :math:`\mathrm{tr}(A) = \mathbb E[z^\top A z]`,
  Rademacher :math:`z` (Hutchinson 1989).
* :func:`spectral_density` -- stochastic Lanczos quadrature (Lin, Saad & Yang
  2016; Ghorbani, Krishnan & Xiao 2019): with :math:`T_m = S \Theta S^\top` from
  a Lanczos run started at a normalised Rademacher vector, the nodes
  :math:`\theta_i` and weights :math:`\tau_i = S_{1i}^2` give a Gauss quadrature
  of the spectral measure :math:`\frac1n\sum_j \delta(t - \lambda_j)`; averaging
  runs and smoothing with a Gaussian of width :math:`\sigma` gives the density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class LinearOperator(Protocol):
    """What the spectrum tools need: a symmetric product on flat vectors."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def mv(self, v: Tensor) -> Tensor: ...


class MatrixOperator:
    """A dense symmetric matrix as a :class:`LinearOperator` (tests, small problems)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device

    def mv(self, v: Tensor) -> Tensor:
        return self.matrix @ v


def _rademacher(dim: int, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return (torch.randint(0, 2, (dim,), generator=generator, device=gen_device) * 2 - 1).to(device=device, dtype=dtype)


@dataclass
class Tridiagonal:
    """The Lanczos tridiagonal :math:`T_m` (``alphas`` on, ``betas`` beside the
    diagonal) and the orthonormal basis :math:`Q_m` (rows)."""

    alphas: Tensor
    betas: Tensor
    basis: Tensor

    def eigh(self) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending) and the eigenvectors of :math:`T_m` (columns)."""
        m = self.alphas.numel()
        t = torch.diag(self.alphas.double())
        if m > 1:
            off = self.betas.double()
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        return torch.linalg.eigh(t)


def lanczos(operator: LinearOperator, v0: Tensor, n_iter: int) -> Tridiagonal:
    """Run ``n_iter`` Lanczos steps from ``v0`` with full reorthogonalisation.

    Stops early when the Krylov space is invariant (``beta`` ~ 0), so the result
    may have fewer than ``n_iter`` Ritz values.

    Args:
        operator: a symmetric linear operator (``mv``, ``dim``, ``dtype``, ``device``).
        v0: the start vector (normalised here).
        n_iter: most Lanczos steps (at most the dimension).

    Example:
        Three steps on a 3x3 matrix recover its whole spectrum as Ritz values:

        >>> import torch
        >>> from hpo2.curvature import MatrixOperator, lanczos
        >>> A = torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))
        >>> ritz_values, _ = lanczos(MatrixOperator(A), torch.ones(3, dtype=torch.float64), n_iter=3).eigh()
        >>> torch.allclose(ritz_values.sort().values, torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
        True
    """
    if n_iter < 1:
        raise ValueError(f"n_iter={n_iter} must be >= 1")
    n_iter = min(n_iter, operator.dim)
    q = v0 / v0.norm()
    basis = [q]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    for j in range(n_iter):
        w = operator.mv(basis[j])
        alpha = torch.dot(w, basis[j])
        alphas.append(alpha)
        q_mat = torch.stack(basis)
        # Two passes of classical Gram-Schmidt keep Q orthonormal in floating point.
        w = w - q_mat.T @ (q_mat @ w)
        w = w - q_mat.T @ (q_mat @ w)
        beta = w.norm()
        if j == n_iter - 1 or beta <= 1e-10 * max(1.0, abs(float(alpha))):
            break
        betas.append(beta)
        basis.append(w / beta)
    empty = torch.zeros(0, dtype=v0.dtype, device=v0.device)
    return Tridiagonal(
        alphas=torch.stack(alphas),
        betas=torch.stack(betas) if betas else empty,
        basis=torch.stack(basis[: len(alphas)]),
    )


@dataclass
class Eigenpairs:
    """Top eigenvalues (descending) and, where computed, unit eigenvectors (rows)."""

    eigenvalues: Tensor
    eigenvectors: Tensor


_METHODS = ("lanczos", "power")


def top_eigenvalues(
    operator: LinearOperator,
    k: int = 1,
    method: str = "lanczos",
    n_iter: int | None = None,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Eigenpairs:
    """The ``k`` largest eigenvalues of a symmetric operator.

    Args:
        operator: the curvature operator.
        k: how many eigenvalues.
        method: ``"lanczos"`` (largest algebraic; ``n_iter`` Lanczos steps, default
            ``max(2k + 20, 30)``) or ``"power"`` (power iteration with deflation:
            largest magnitude first, at most ``n_iter`` products each, default 100,
            stopping when the Rayleigh quotient changes by less than ``tol``
            relatively).
        n_iter: Lanczos steps, or the power method's products per eigenvalue (defaults above).
        tol: relative tolerance of the power method.
        generator: seeded generator for the start vectors.

    Example:
        The two largest eigenvalues of a diagonal matrix:

        >>> import torch
        >>> from hpo2.curvature import MatrixOperator, top_eigenvalues
        >>> A = torch.diag(torch.tensor([5.0, 3.0, 1.0, -2.0], dtype=torch.float64))
        >>> pairs = top_eigenvalues(MatrixOperator(A), k=2, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(pairs.eigenvalues, torch.tensor([5.0, 3.0], dtype=torch.float64))
        True
    """
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not supported; allowed: {', '.join(_METHODS)}")
    if not 1 <= k <= operator.dim:
        raise ValueError(f"k={k} must be between 1 and the operator's dimension {operator.dim}")
    if method == "lanczos":
        tri = lanczos(
            operator,
            _rademacher(operator.dim, operator.dtype, operator.device, generator),
            n_iter or max(2 * k + 20, 30),
        )
        theta, s = tri.eigh()
        order = torch.argsort(theta, descending=True)[:k]
        vectors = (s[:, order].T.to(tri.basis.dtype)) @ tri.basis
        return Eigenpairs(theta[order].to(operator.dtype), vectors)
    return _power_deflation(operator, k, n_iter or 100, tol, generator)


def _power_deflation(
    operator: LinearOperator, k: int, n_iter: int, tol: float, generator: torch.Generator | None
) -> Eigenpairs:
    found: list[Tensor] = []
    values: list[Tensor] = []

    def project_out(v: Tensor) -> Tensor:
        for u in found:
            v = v - torch.dot(u, v) * u
        return v

    for _ in range(k):
        v = project_out(_rademacher(operator.dim, operator.dtype, operator.device, generator))
        v = v / v.norm()
        value = torch.zeros((), dtype=operator.dtype, device=operator.device)
        for it in range(n_iter):
            av = project_out(operator.mv(v))
            new_value = torch.dot(v, av)
            norm = av.norm()
            if norm == 0:
                value = new_value
                break
            v = av / norm
            if it > 0 and abs(float(new_value - value)) <= tol * (abs(float(value)) + 1e-12):
                value = new_value
                break
            value = new_value
        found.append(v)
        values.append(value)
    return Eigenpairs(torch.stack(values), torch.stack(found))


def hutchinson_trace(operator: LinearOperator, n_probes: int = 100, generator: torch.Generator | None = None) -> float:
    r""":math:`\mathrm{tr}(A) \approx \frac1m \sum_k z_k^\top A z_k` with Rademacher probes
    (Hutchinson 1990).

    Args:
        operator: a symmetric linear operator.
        n_probes: number of probes :math:`m` (one product each).
        generator: seeded ``torch.Generator`` for reproducible probes.

    Example:
        The estimate of :math:`\mathrm{tr}(A) = 8.5`:

        >>> import torch
        >>> from hpo2.curvature import MatrixOperator, hutchinson_trace
        >>> A = torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)) + 0.5
        >>> estimate = hutchinson_trace(MatrixOperator(A), n_probes=1000, generator=torch.Generator().manual_seed(0))
        >>> abs(estimate - 8.5) < 0.2
        True
    """
    if n_probes < 1:
        raise ValueError(f"n_probes={n_probes} must be >= 1")
    total = 0.0
    for _ in range(n_probes):
        z = _rademacher(operator.dim, operator.dtype, operator.device, generator)
        total += float(torch.dot(z, operator.mv(z)))
    return total / n_probes


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: ``nodes[r]``/``weights[r]`` of run ``r`` and
    the Gaussian-smoothed density on ``grid`` (integrates to ~1)."""

    nodes: list[Tensor]
    weights: list[Tensor]
    grid: Tensor
    density: Tensor

    def trace_estimate(self, dim: int) -> float:
        r""":math:`n \cdot \frac1R \sum_r \sum_i \tau_{ri}\theta_{ri}`, the quadrature's trace."""
        return dim * float(sum((w * t).sum() for w, t in zip(self.weights, self.nodes))) / len(self.nodes)


def spectral_density(
    operator: LinearOperator,
    n_iter: int = 30,
    n_runs: int = 5,
    grid_size: int = 256,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> SpectralDensity:
    r"""Eigenvalue density by stochastic Lanczos quadrature.

    Args:
        operator: a symmetric linear operator.
        n_iter: Lanczos steps per run (quadrature nodes).
        n_runs: independent Rademacher start vectors averaged.
        grid_size: points of the returned grid.
        sigma: width of the Gaussian kernel; default 1% of the spectral range.
        generator: seeded ``torch.Generator`` for reproducible start vectors.

    Example:
        The quadrature's mean eigenvalue, and a density that integrates to one:

        >>> import torch
        >>> from hpo2.curvature import MatrixOperator, spectral_density
        >>> A = torch.diag(torch.linspace(-1.0, 2.0, 50, dtype=torch.float64))
        >>> sd = spectral_density(MatrixOperator(A), n_iter=20, n_runs=4, generator=torch.Generator().manual_seed(0))
        >>> abs(sd.trace_estimate(dim=50) / 50 - 0.5) < 0.05  # the mean eigenvalue is 0.5
        True
        >>> bool(((sd.density[1:] + sd.density[:-1]) / 2 * sd.grid.diff()).sum().sub(1).abs() < 0.05)
        True
    """
    if n_runs < 1:
        raise ValueError(f"n_runs={n_runs} must be >= 1")
    nodes, weights = [], []
    for _ in range(n_runs):
        tri = lanczos(operator, _rademacher(operator.dim, operator.dtype, operator.device, generator), n_iter)
        theta, s = tri.eigh()
        nodes.append(theta)
        weights.append(s[0, :] ** 2)
    all_nodes = torch.cat(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    width = sigma if sigma is not None else max(0.01 * (hi - lo), 1e-8 * max(abs(lo), abs(hi), 1.0))
    grid = torch.linspace(lo - 5 * width, hi + 5 * width, grid_size, dtype=torch.float64)
    density = torch.zeros_like(grid)
    for theta, w in zip(nodes, weights):
        kernel = torch.exp(-0.5 * ((grid[:, None] - theta[None, :]) / width) ** 2) / (width * (2 * torch.pi) ** 0.5)
        density += kernel @ w
    return SpectralDensity(nodes=nodes, weights=weights, grid=grid, density=density / n_runs)
