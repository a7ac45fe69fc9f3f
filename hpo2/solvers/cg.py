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

**No host round trip per iteration.**  Every scalar of the recurrence (:math:`\alpha`,
:math:`\beta`, :math:`r^\top y`, :math:`p^\top A p`, the norms, :math:`\phi`) stays a
0-d tensor on the vector's device, and every stopping test above is evaluated there
each iteration into a *stopped* flag: from the iteration a test fires, the iterate,
residual and direction are frozen (``torch.where``), so later iterations cannot
change the result.  The host reads the flag only every ``check_every`` iterations
(one ``bool`` each) and the result once at the end (one ``tolist``): a stop is thus
seen up to ``check_every - 1`` curvature products late.  Those products are real
work and are counted (:attr:`CGResult.n_products`); the returned solution, stop
reason, iteration count and stored iterates are those of a check every iteration.
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


DEFAULT_CHECK_EVERY = 5
"""Iterations between two reads of the stop flag by the host.  A read waits for the
device to drain (tens of microseconds on a GPU, as long as an iteration's vector work
on hpo2's models); a late read wastes at most ``check_every - 1`` curvature products."""

_CODE = {reason: float(code) for code, reason in enumerate(STOP_REASONS)}


def _to_boundary(x: Tensor, p: Tensor, radius: float) -> Tensor:
    """:math:`x + \\tau p` with :math:`\\tau \\ge 0` and :math:`\\|x + \\tau p\\| = \\Delta`."""
    pp, xp, xx = torch.dot(p, p), torch.dot(x, p), torch.dot(x, x)
    tau = (-xp + torch.sqrt(xp**2 + pp * (radius**2 - xx).clamp_min(0))) / pp
    return x + tau * p


def _validate(b: Tensor, x0: Tensor | None, max_iter: int, preconditioner: Tensor | None, radius: float | None,
              check_every: int) -> None:
    if b.dim() != 1:
        raise ValueError(f"b must be a flat vector, got shape {tuple(b.shape)}")
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} must be >= 1")
    if check_every < 1:
        raise ValueError(f"check_every={check_every} must be >= 1")
    if preconditioner is not None and (preconditioner.shape != b.shape or bool((preconditioner <= 0).any())):
        raise ValueError("preconditioner must be the positive diagonal of M, shaped like b")
    if radius is not None:
        if radius <= 0:
            raise ValueError(f"radius={radius} must be > 0")
        if x0 is not None or preconditioner is not None:
            raise ValueError("the Steihaug trust region starts at x0 = 0 and takes no preconditioner")


class _Run:
    """The CG recurrence with its scalars and its stop record on the device.

    ``stopped`` (0-d bool) is set by the first stopping test that fires; with it
    ``reason`` (index into :data:`STOP_REASONS`), ``stop_iter`` (the iteration the
    result reports), ``last_update`` (the last iteration that moved ``x``) and, for
    the boundary stops, ``x_final``.  Once stopped, ``x``, ``r``, ``p`` no longer change.
    """

    def __init__(self, matvec: MatVec, b: Tensor, x0: Tensor | None, max_iter: int, tol: float,
                 preconditioner: Tensor | None, radius: float | None) -> None:
        self.matvec, self.b, self.preconditioner, self.radius = matvec, b, preconditioner, radius
        self.n_products = 0
        if x0 is None:
            self.x, self.r = torch.zeros_like(b), b.clone()
        else:
            self.x = x0.clone()
            self.r = b - matvec(self.x)
            self.n_products += 1
        self.stop_residual = max(tol, torch.finfo(b.dtype).eps) * b.norm()
        y = self._precondition(self.r)
        self.p, self.rho = y.clone(), torch.dot(self.r, y)
        self.quad = torch.zeros(max_iter + 1, dtype=b.dtype, device=b.device)  # phi(x_i); phi(x_0) next
        self.quad[0] = -0.5 * torch.dot(self.x, self.r + b)
        scalar = torch.zeros((), dtype=b.dtype, device=b.device)
        self.stopped = torch.zeros((), dtype=torch.bool, device=b.device)
        self.reason, self.stop_iter, self.last_update = scalar.clone(), scalar.clone(), scalar.clone()
        self.curvature = torch.full_like(scalar, math.nan)
        self.direction = torch.zeros_like(b)  # the negative-curvature direction, once met
        self.x_final: Tensor | None = None  # the boundary point (trust region only)

    def _precondition(self, r: Tensor) -> Tensor:
        return r / self.preconditioner if self.preconditioner is not None else r

    def stop(self, fires: Tensor, reason: str, stop_iter: int, last_update: int) -> Tensor:
        """Record ``reason`` if ``fires`` and nothing stopped CG before; return whether it did."""
        new = fires & ~self.stopped
        self.reason = torch.where(new, _CODE[reason], self.reason)
        self.stop_iter = torch.where(new, float(stop_iter), self.stop_iter)
        self.last_update = torch.where(new, float(last_update), self.last_update)
        self.stopped = self.stopped | new
        return new

    def check_residual(self, i: int) -> None:
        """The residual test at the top of iteration ``i`` (before its product)."""
        self.stop(self.r.norm() <= self.stop_residual, "residual_tol", i - 1, i - 1)

    def iterate(self, i: int) -> None:
        """Iteration ``i``: one product, the curvature and iterate tests, the update."""
        p, x = self.p, self.x
        ap = self.matvec(p)
        self.n_products += 1
        pap, pp = torch.dot(p, ap), torch.dot(p, p)
        self.stop(~(torch.isfinite(pap) & torch.isfinite(pp)) | (pp == 0), "breakdown", i - 1, i - 1)
        negative = self.stop(pap <= 0, "negative_curvature", i - 1, i - 1)
        self.curvature = torch.where(negative, pap / pp, self.curvature)
        self.direction = torch.where(negative, p, self.direction)
        alpha = self.rho / pap
        x_next = x + alpha * p
        x_next_norm = x_next.norm()
        self.stop(~torch.isfinite(x_next_norm), "breakdown", i - 1, i - 1)
        if self.radius is not None:
            outside = self.stop(x_next_norm >= self.radius, "trust_region_boundary", i, i - 1)
            boundary = _to_boundary(x, p, self.radius)
            self.x_final = torch.where(negative | outside, boundary, x if self.x_final is None else self.x_final)
        moving = ~self.stopped
        self.x = torch.where(moving, x_next, x)
        self.r = torch.where(moving, self.r - alpha * ap, self.r)
        self.quad[i] = -0.5 * torch.dot(self.x, self.r + self.b)

    def check_martens(self, i: int, eps: float, min_k: int) -> None:
        """Martens' relative-progress rule after the update of iteration ``i``."""
        k = max(min_k, math.ceil(0.1 * i))
        if i > k:
            q_now = self.quad[i]
            self.stop((q_now < 0) & ((q_now - self.quad[i - k]) / q_now < k * eps), "relative_progress", i, i)

    def next_direction(self) -> None:
        """:math:`p \\leftarrow y + (r^\\top y / \\rho)\\, p` (frozen once stopped)."""
        y = self._precondition(self.r)
        rho_next = torch.dot(self.r, y)
        moving = ~self.stopped
        self.p = torch.where(moving, y + (rho_next / self.rho) * self.p, self.p)
        self.rho = torch.where(moving, rho_next, self.rho)

    def finish(self, max_iter: int, stored: list[tuple[int, Tensor]], store_iterates: bool) -> CGResult:
        """Close a run that reached ``max_iter``, read the record in one conversion, build the result."""
        self.stop(self.r.norm() <= self.stop_residual, "residual_tol", max_iter, max_iter)
        self.stop(torch.ones_like(self.stopped), "max_iter", max_iter, max_iter)
        record = torch.stack([self.reason, self.stop_iter, self.last_update, self.r.norm(), self.curvature])
        code, stop_iter_f, last_update_f, residual_norm, curvature, *quad = torch.cat([record, self.quad]).tolist()
        stop_iter, last_update, reason = int(stop_iter_f), int(last_update_f), STOP_REASONS[int(code)]
        quad_values = quad[: last_update + 1]
        boundary = self.radius is not None and reason in ("negative_curvature", "trust_region_boundary")
        x = self.x_final if boundary and self.x_final is not None else self.x
        iterates = [(i, xi) for i, xi in stored if i <= last_update]
        if store_iterates and (not iterates or iterates[-1][0] != stop_iter):
            iterates.append((stop_iter, x.clone()))
        negative = reason == "negative_curvature"
        return CGResult(
            x=x,
            n_iter=stop_iter,
            n_products=self.n_products,
            stop_reason=reason,
            residual_norm=residual_norm,
            quad_value=quad_values[-1],
            iterates=iterates,
            quad_values=quad_values,
            negative_curvature=self.direction if negative else None,
            curvature=curvature if negative else None,
        )


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
    check_every: int = DEFAULT_CHECK_EVERY,
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
        radius: Steihaug trust-region radius :math:`\\Delta`; then ``x0`` must be
            ``None`` and ``preconditioner`` too (the region is Euclidean).
        check_every: iterations between the host's reads of the stop flag (see the
            module docstring); 1 reads it every iteration and wastes no product.
    """
    _validate(b, x0, max_iter, preconditioner, radius, check_every)
    schedule = backtrack_schedule(max_iter, gamma) if store_iterates else set()
    run = _Run(matvec, b, x0, max_iter, tol, preconditioner, radius)
    stored: list[tuple[int, Tensor]] = []
    for i in range(1, max_iter + 1):
        run.check_residual(i)
        # a cold start cannot stop before its first product unless b = 0; a warm start may
        if (i == 1 and x0 is not None or i > 1 and (i - 1) % check_every == 0) and bool(run.stopped):
            break
        run.iterate(i)
        if i in schedule:
            stored.append((i, run.x.clone()))
        if martens_eps is not None:
            run.check_martens(i, martens_eps, martens_min_k)
        run.next_direction()
    return run.finish(max_iter, stored, store_iterates)


def steihaug_cg(matvec: MatVec, b: Tensor, radius: float, *, max_iter: int = 250, tol: float = 1e-10) -> CGResult:
    """Steihaug-Toint truncated CG for :math:`\\min_{\\|x\\| \\le \\Delta} \\tfrac12 x^\\top A x - b^\\top x`."""
    return cg(matvec, b, max_iter=max_iter, tol=tol, radius=radius)
