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

**No host round trip per iteration.**  The recurrence runs on the device without
reading anything: its scalars (:math:`\alpha`, :math:`\beta`, :math:`r^\top y`) stay 0-d
tensors, and each iteration writes the numbers the stopping tests need
(:math:`p^\top A p`, :math:`p^\top p`, :math:`\|x_i\|`, :math:`\|r_i\|`, :math:`\phi(x_i)`)
into one row of a device table.  Every ``check_every`` iterations the host reads the
new rows in one transfer and applies the tests above, in order, iteration by
iteration, to the same numbers a check every iteration would read; the vectors of
those iterations are kept (by reference: the recurrence never writes in place), so a
stop found inside the window returns that iteration's iterate, direction and
boundary point.  A stop is thus seen up to ``check_every - 1`` curvature products
late; those products are real work and are counted (:attr:`CGResult.n_products`),
and the solution, stop reason, iteration count, model values and stored iterates
are those of a check every iteration.  By default (:func:`default_check_every`) the
host reads every 5 iterations on an accelerator and after every iteration on the CPU,
where a read costs nothing and a late stop would cost products.
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
"""Iterations between two reads by the host on an accelerator.  A read waits for the
device to drain its queue and stops the host from queuing the next iterations ahead
(tens of microseconds on a GPU, as long as an iteration's vector work on hpo2's
models); a late read wastes at most ``check_every - 1`` curvature products."""


def default_check_every(device: torch.device) -> int:
    """``check_every`` when the caller gives none: 1 on the CPU, where reading a number
    is a memory load with no queue to drain (so no product is ever wasted), and
    :data:`DEFAULT_CHECK_EVERY` on an accelerator."""
    return 1 if device.type == "cpu" else DEFAULT_CHECK_EVERY


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


@dataclass(frozen=True)
class _Rules:
    """The stopping rules of one solve (see the module docstring)."""

    max_iter: int
    tol: float
    martens_eps: float | None
    martens_min_k: int
    radius: float | None
    schedule: set[int]


class _Run:
    """The CG recurrence on the device and the host's reading of its trace.

    Row ``i`` of :attr:`trace` holds :math:`(p_i^\\top A p_i,\\ p_i^\\top p_i,\\
    \\|x_i\\|,\\ \\|r_i\\|,\\ \\phi(x_i))` of iteration ``i`` (row 0: :math:`\\|b\\|` in the
    first column, then the start's residual and model value).  :meth:`read` applies
    the stopping rules to the rows not read yet and returns the result at the first
    one that fires.
    """

    def __init__(
        self, matvec: MatVec, b: Tensor, x0: Tensor | None, preconditioner: Tensor | None, rules: _Rules
    ) -> None:
        self.matvec, self.b, self.preconditioner, self.rules = matvec, b, preconditioner, rules
        self.n_products = 0
        if x0 is None:
            x, self.r = torch.zeros_like(b), b.clone()
        else:
            x = x0.clone()
            self.r = b - matvec(x)
            self.n_products += 1
        y = self._precondition(self.r)
        self.p, self.rho = y.clone(), torch.dot(self.r, y)
        self.trace = torch.empty(rules.max_iter + 1, 5, dtype=b.dtype, device=b.device)
        nan = torch.full((), math.nan, dtype=b.dtype, device=b.device)
        self.trace[0] = torch.stack([b.norm(), nan, nan, self.r.norm(), -0.5 * torch.dot(x, self.r + b)])
        self.xs: dict[int, Tensor] = {0: x}  # the iterates not read yet (and the last one read)
        self.ps: dict[int, Tensor] = {}  # the directions of those iterations
        self.stored: list[tuple[int, Tensor]] = []
        self.n_read = 0  # rows read
        self.quad_values: list[float] = []
        self.stop_residual = math.nan
        self.residual_norm = math.nan

    def _precondition(self, r: Tensor) -> Tensor:
        return r / self.preconditioner if self.preconditioner is not None else r

    def iterate(self, i: int) -> None:
        """Iteration ``i`` of the recurrence: one product, nothing read."""
        x, p = self.xs[i - 1], self.p
        ap = self.matvec(p)
        self.n_products += 1
        pap = torch.dot(p, ap)
        alpha = self.rho / pap
        x_next = x + alpha * p
        self.r = self.r - alpha * ap
        y = self._precondition(self.r)
        rho_next = torch.dot(self.r, y)
        self.p = y + (rho_next / self.rho) * p
        self.rho = rho_next
        quad = -0.5 * torch.dot(x_next, self.r + self.b)
        self.trace[i] = torch.stack([pap, torch.dot(p, p), x_next.norm(), self.r.norm(), quad])
        self.xs[i], self.ps[i] = x_next, p
        if i in self.rules.schedule:
            self.stored.append((i, x_next))

    def read(self, upto: int) -> CGResult | None:
        """Apply the stopping rules to rows ``n_read .. upto`` (one transfer)."""
        first = self.n_read
        rows = self.trace[first : upto + 1].tolist()
        for i, (pap, pp, x_norm, r_norm, quad) in enumerate(rows, start=first):
            if i == 0:
                self.stop_residual = max(self.rules.tol, torch.finfo(self.b.dtype).eps) * pap  # pap: ||b|| in row 0
            elif (stop := self._rules_of_iteration(i, pap, pp, x_norm)) is not None:
                return stop
            self.quad_values.append(quad)
            self.residual_norm = r_norm
            if i > 0 and self._martens_fires(i):
                return self._result(i, "relative_progress", self.xs[i])
            if r_norm <= self.stop_residual:  # the test at the top of iteration i + 1, or after the last
                return self._result(i, "residual_tol", self.xs[i])
        self.n_read = upto + 1
        for j in [j for j in self.xs if j < upto]:  # keep only what the next rows may need
            del self.xs[j]
        for j in [j for j in self.ps if j <= upto]:
            del self.ps[j]
        return None

    def _rules_of_iteration(self, i: int, pap: float, pp: float, x_norm: float) -> CGResult | None:
        """The tests of iteration ``i`` before its update: breakdown, negative curvature,
        non-finite iterate, trust-region boundary."""
        x, p, radius = self.xs[i - 1], self.ps[i], self.rules.radius
        if not (math.isfinite(pap) and math.isfinite(pp)) or pp == 0.0:
            return self._result(i - 1, "breakdown", x)
        if pap <= 0:
            x_final = _to_boundary(x, p, radius) if radius is not None else x
            return self._result(i - 1, "negative_curvature", x_final, negative_curvature=p, curvature=pap / pp)
        if not math.isfinite(x_norm):
            return self._result(i - 1, "breakdown", x)
        if radius is not None and x_norm >= radius:
            return self._result(i, "trust_region_boundary", _to_boundary(x, p, radius))
        return None

    def _martens_fires(self, i: int) -> bool:
        if self.rules.martens_eps is None:
            return False
        k = max(self.rules.martens_min_k, math.ceil(0.1 * i))
        q = self.quad_values
        return i > k and q[i] < 0 and (q[i] - q[i - k]) / q[i] < k * self.rules.martens_eps

    def _result(
        self, n_iter: int, reason: str, x: Tensor, *, negative_curvature: Tensor | None = None,
        curvature: float | None = None,
    ) -> CGResult:
        """The result of a stop at ``n_iter`` with the iterate (or boundary point) ``x``."""
        last_update = n_iter - 1 if reason == "trust_region_boundary" else n_iter
        iterates = [(i, xi) for i, xi in self.stored if i <= last_update]
        if self.rules.schedule and (not iterates or iterates[-1][0] != n_iter):
            iterates.append((n_iter, x))
        return CGResult(
            x=x,
            n_iter=n_iter,
            n_products=self.n_products,
            stop_reason=reason,
            residual_norm=self.residual_norm,
            quad_value=self.quad_values[-1],
            iterates=iterates,
            quad_values=self.quad_values,
            negative_curvature=negative_curvature,
            curvature=curvature,
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
    check_every: int | None = None,
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
        check_every: iterations between the host's reads (see the module
            docstring); 1 reads after every iteration and wastes no product;
            ``None``: :func:`default_check_every` of ``b``'s device.

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
    if check_every is None:
        check_every = default_check_every(b.device)
    _validate(b, x0, max_iter, preconditioner, radius, check_every)
    schedule = backtrack_schedule(max_iter, gamma) if store_iterates else set()
    run = _Run(matvec, b, x0, preconditioner, _Rules(max_iter, tol, martens_eps, martens_min_k, radius, schedule))
    if x0 is not None and (result := run.read(0)) is not None:  # a warm start may already solve it
        return result
    for i in range(1, max_iter + 1):
        run.iterate(i)
        if (i % check_every == 0 or i == max_iter) and (result := run.read(i)) is not None:
            return result
    return run._result(max_iter, "max_iter", run.xs[max_iter])


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
