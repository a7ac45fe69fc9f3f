r"""Preconditioned conjugate gradient for the Newton system :math:`A x = b`.

One loop serves truncated Newton, Hessian-free and trust-region methods:

* **Preconditioning** by a diagonal :math:`M \approx A` (Hestenes & Stiefel 1952;
  Nocedal & Wright, Alg. 5.3): :math:`y = M^{-1} r`.
* **Stopping** on the relative residual :math:`\|r\| \le \max(\text{tol},
  \varepsilon)\,\|b\|` (:math:`\varepsilon` the dtype's machine epsilon: below
  it the recurrence only propagates round-off, and in float32 the residual then
  underflows and breaks the recurrence), on
  ``max_iter``, or by **Martens' relative-progress rule** (Martens 2010, sec. 4.4):
  with the quadratic :math:`\phi(x) = \tfrac12 x^\top A x - b^\top x`, stop at
  iteration :math:`i` when :math:`i > k`, :math:`\phi(x_i) < 0` and
  :math:`\frac{\phi(x_i) - \phi(x_{i-k})}{\phi(x_i)} < k\,\epsilon`, with
  :math:`k = \max(10, 0.1\,i)` and :math:`\epsilon = 5\cdot10^{-4}` by default.
  :math:`\phi` is read off the residual :math:`r = b - Ax` as
  :math:`\phi(x) = -\tfrac12 x^\top (r + b)`: no extra curvature product.
* **Iterate storage** for CG backtracking (Martens 2010, sec. 4.6): the iterates
  at :math:`i = \lceil \gamma^j \rceil` (:math:`\gamma = 1.3`) and the last one.
* **Negative curvature**: a direction with :math:`p^\top A p \le 0` stops CG and
  is returned, with its Rayleigh quotient, for the caller to use.
* **Steihaug trust region** (Steihaug 1983; Nocedal & Wright, Alg. 7.2): with a
  ``radius`` :math:`\Delta`, CG starts at 0 and, on negative curvature or when an
  iterate would leave :math:`\|x\| \le \Delta`, returns the point on the boundary
  along the current direction.
* **Breakdown**: a non-finite curvature or iterate, or a direction that underflowed
  to zero, stops CG with the last finite iterate (``"breakdown"``) instead of
  returning NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]

STOP_REASONS = (
    "residual_tol",
    "relative_progress",
    "max_iter",
    "negative_curvature",
    "trust_region_boundary",
    "breakdown",
)


@dataclass
class CGResult:
    """What CG returns: the solution and why it stopped.

    Attributes:
        x: the final iterate (on the boundary when a trust region stopped it).
        n_iter: CG iterations done (each one curvature product).
        n_products: curvature products used, the start residual of a warm start included.
        stop_reason: one of :data:`STOP_REASONS`.
        residual_norm: :math:`\\|b - Ax\\|` of the last interior iterate.
        quad_value: :math:`\\phi(x)` of the last interior iterate.
        iterates: ``(iteration, x_i)`` pairs stored for backtracking, ascending.
        quad_values: :math:`\\phi(x_i)` for every iteration ``i`` (``0`` is the start).
        negative_curvature: the direction :math:`p` with :math:`p^\\top A p \\le 0`, if met.
        curvature: :math:`p^\\top A p / p^\\top p` along that direction.
    """

    x: Tensor
    n_iter: int
    n_products: int
    stop_reason: str
    residual_norm: float
    quad_value: float
    iterates: list[tuple[int, Tensor]] = field(default_factory=list)
    quad_values: list[float] = field(default_factory=list)
    negative_curvature: Tensor | None = None
    curvature: float | None = None


def backtrack_schedule(max_iter: int, gamma: float = 1.3) -> set[int]:
    """Iterations :math:`\\lceil \\gamma^j \\rceil \\le` ``max_iter`` at which Martens
    (2010, sec. 4.6) stores CG iterates for backtracking."""
    if gamma <= 1:
        raise ValueError(f"gamma={gamma} must be > 1")
    schedule, j = set(), 0
    while (i := math.ceil(gamma**j)) <= max_iter:
        schedule.add(i)
        j += 1
    return schedule


def _to_boundary(x: Tensor, p: Tensor, radius: float) -> Tensor:
    """:math:`x + \\tau p` with :math:`\\tau \\ge 0` and :math:`\\|x + \\tau p\\| = \\Delta`."""
    pp, xp, xx = torch.dot(p, p), torch.dot(x, p), torch.dot(x, x)
    tau = (-xp + torch.sqrt(xp**2 + pp * (radius**2 - xx).clamp_min(0))) / pp
    return x + tau * p


def cg(
    matvec: MatVec,
    b: Tensor,
    x0: Tensor | None = None,
    *,
    max_iter: int = 250,
    tol: float = 1e-10,
    preconditioner: Tensor | None = None,
    martens_eps: float | None = None,
    martens_min_k: int = 10,
    store_iterates: bool = False,
    gamma: float = 1.3,
    radius: float | None = None,
) -> CGResult:
    """Solve :math:`A x = b` for symmetric :math:`A` given as ``matvec``.

    Args:
        matvec: :math:`v \\mapsto A v` on flat vectors.
        b: right-hand side (for a Newton step, the negative gradient).
        x0: start (warm start); zeros when ``None``.
        max_iter: most CG iterations.
        tol: stop when :math:`\\|r\\| \\le` ``max(tol, eps)`` :math:`\\|b\\|` (eps: the
            machine epsilon of ``b``'s dtype).
        preconditioner: the diagonal of :math:`M \\approx A` (positive entries).
        martens_eps: enables Martens' relative-progress rule with this
            :math:`\\epsilon` (5e-4 in the paper); ``None`` disables it.
        martens_min_k: the rule's minimum window :math:`k` (10 in the paper).
        store_iterates: keep the iterates of :func:`backtrack_schedule` (``gamma``).
        gamma: growth factor of the stored iterates' indices :math:`\\lceil \\gamma^j \\rceil` (Martens 2010 sec. 4.6).
        radius: Steihaug trust-region radius :math:`\\Delta`; then ``x0`` must be
            ``None`` and ``preconditioner`` too (the region is Euclidean).

    Example:
        On a symmetric positive definite 3x3 system CG is exact after at most 3 iterations:

        >>> import torch
        >>> from hpo2.solvers import cg
        >>> A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        >>> result = cg(lambda v: A @ v, b)
        >>> torch.allclose(result.x, torch.linalg.solve(A, b)), result.n_iter <= 3
        (True, True)
    """
    if b.dim() != 1:
        raise ValueError(f"b must be a flat vector, got shape {tuple(b.shape)}")
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    if preconditioner is not None and (preconditioner.shape != b.shape or bool((preconditioner <= 0).any())):
        raise ValueError("preconditioner must be the positive diagonal of M, shaped like b")
    if radius is not None:
        if radius <= 0:
            raise ValueError(f"radius={radius} must be > 0")
        if x0 is not None or preconditioner is not None:
            raise ValueError("the Steihaug trust region starts at x0 = 0 and takes no preconditioner")
    schedule = backtrack_schedule(max_iter, gamma) if store_iterates else set()

    n_products = 0
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - matvec(x)
        n_products += 1
    stop_residual = max(tol, torch.finfo(b.dtype).eps) * float(b.norm())
    y = r / preconditioner if preconditioner is not None else r
    p = y.clone()
    rho = torch.dot(r, y)
    quad_values = [float(-0.5 * torch.dot(x, r + b))]
    iterates: list[tuple[int, Tensor]] = []

    def result(x_final: Tensor, n_iter: int, reason: str, **extra: object) -> CGResult:
        if store_iterates and (not iterates or iterates[-1][0] != n_iter):
            iterates.append((n_iter, x_final.clone()))
        return CGResult(
            x=x_final,
            n_iter=n_iter,
            n_products=n_products,
            stop_reason=reason,
            residual_norm=float(r.norm()),
            quad_value=quad_values[-1],
            iterates=iterates,
            quad_values=quad_values,
            **extra,  # type: ignore[arg-type]
        )

    for i in range(1, max_iter + 1):
        if float(r.norm()) <= stop_residual:
            return result(x, i - 1, "residual_tol")
        ap = matvec(p)
        n_products += 1
        pap, pp = float(torch.dot(p, ap)), float(torch.dot(p, p))
        if not (math.isfinite(pap) and math.isfinite(pp)) or pp == 0.0:
            return result(x, i - 1, "breakdown")
        if pap <= 0:
            curvature = pap / pp
            x_final = _to_boundary(x, p, radius) if radius is not None else x
            return result(x_final, i - 1, "negative_curvature", negative_curvature=p, curvature=curvature)
        alpha = rho / pap
        x_next = x + alpha * p
        x_next_norm = float(x_next.norm())
        if not math.isfinite(x_next_norm):
            return result(x, i - 1, "breakdown")
        if radius is not None and x_next_norm >= radius:
            return result(_to_boundary(x, p, radius), i, "trust_region_boundary")
        x = x_next
        r = r - alpha * ap
        quad_values.append(float(-0.5 * torch.dot(x, r + b)))
        if i in schedule:
            iterates.append((i, x.clone()))
        if martens_eps is not None:
            k = max(martens_min_k, math.ceil(0.1 * i))
            q_now = quad_values[i]
            if i > k and q_now < 0 and (q_now - quad_values[i - k]) / q_now < k * martens_eps:
                return result(x, i, "relative_progress")
        y = r / preconditioner if preconditioner is not None else r
        rho_next = torch.dot(r, y)
        p = y + (rho_next / rho) * p
        rho = rho_next
    if float(r.norm()) <= stop_residual:
        return result(x, max_iter, "residual_tol")
    return result(x, max_iter, "max_iter")


def steihaug_cg(matvec: MatVec, b: Tensor, radius: float, *, max_iter: int = 250, tol: float = 1e-10) -> CGResult:
    """Steihaug-Toint truncated CG for :math:`\\min_{\\|x\\| \\le \\Delta} \\tfrac12 x^\\top A x - b^\\top x`
    (Steihaug 1983; Nocedal & Wright 2006, Alg. 7.2): :func:`cg` with ``radius``.

    Args:
        matvec: :math:`v \\mapsto A v` on flat vectors.
        b: right-hand side (the negative gradient).
        radius: the trust-region radius :math:`\\Delta > 0`.
        max_iter: most CG iterations.
        tol: relative residual tolerance, as in :func:`cg`.

    Example:
        The Newton step :math:`(3, 2)` lies outside the unit ball, so CG stops on its boundary:

        >>> import torch
        >>> from hpo2.solvers import steihaug_cg
        >>> A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> b = torch.tensor([3.0, 4.0], dtype=torch.float64)
        >>> result = steihaug_cg(lambda v: A @ v, b, radius=1.0)
        >>> round(float(result.x.norm()), 6), result.stop_reason
        (1.0, 'trust_region_boundary')
    """
    return cg(matvec, b, max_iter=max_iter, tol=tol, radius=radius)
