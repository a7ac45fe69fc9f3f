r"""Low-rank saddle-free Newton (Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio,
"Identifying and attacking the saddle point problem in high-dimensional non-convex
optimization", NIPS 2014, sec. 5-6).

Newton's step :math:`-H^{-1} g` is attracted to saddle points: along an eigenvector
with :math:`\lambda < 0` it moves *up* the gradient.  Saddle-free Newton rescales by
:math:`|H|` instead, which keeps Newton's step sizes and always descends.  Dauphin
et al. build :math:`|H|` in a Krylov subspace; here it is the rank-:math:`k`
approximation from hpo2's Lanczos (:func:`hpo2.curvature.spectrum.lanczos`, started
at the gradient, ``lanczos_iter`` Hessian-vector products): the :math:`k` Ritz
pairs :math:`(\lambda_i, v_i)` of largest :math:`|\lambda_i|`, refreshed every
``refresh_every`` steps and reused in between.  With :math:`V = [v_1 \dots v_k]`:

.. math::
   d = -V \operatorname{diag}\!\Big(\frac{1}{|\lambda_i| + \delta}\Big) V^\top g
       \;-\; \eta\,(I - V V^\top)\, g,

a damped (:math:`\delta` = ``damping``) saddle-free Newton step in the subspace and
a gradient step (learning rate :math:`\eta` = ``lr``) in its complement.  On a
convex quadratic with :math:`k = n` and :math:`\delta = 0` this is Newton's step.

Cost: one gradient per step; on refresh steps the gradient comes from a backward
pass that keeps its graph (a ``hessian_gradient``) and Lanczos adds ``lanczos_iter``
products, each at its measured price (:mod:`hpo2.optim.costs`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import lanczos
from hpo2.curvature.spectrum import LinearOperator
from hpo2.optim.base import Closure, CurvatureOptimizer
from hpo2.optim.costs import SOLVER_ITERATIONS
from hpo2.optim.settings import FloatRange, IntRange, OptimizerSettings, document_settings
from hpo2.solvers import host_floats


class SaddleFreeNewtonSettings(OptimizerSettings):
    """Settings of :class:`SaddleFreeNewton`."""

    family: ClassVar[str] = "Newton (low-rank)"
    reference: ClassVar[str] = "Dauphin et al., NIPS 2014 (arXiv 1406.2572), sec. 5-6"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 1.0, log=True)] = 0.05
    """Learning rate of the gradient step outside the Ritz subspace (the whole step before the first pairs)."""
    damping: Annotated[float, Field(ge=0), FloatRange(1e-3, 10.0, log=True)] = 0.1
    """delta added to |lambda_i| in the saddle-free Newton step."""
    rank: Annotated[int, Field(ge=1), IntRange(1, 32, log=True)] = 8
    """Number k of Ritz pairs (largest |lambda|) kept for |H|."""
    lanczos_iter: Annotated[int, Field(ge=1)] = 20
    """Lanczos iterations (Hessian-vector products) per refresh."""
    refresh_every: Annotated[int, Field(ge=1), IntRange(1, 100, log=True)] = 10
    """Recompute the Ritz pairs every this many steps."""


@document_settings
class SaddleFreeNewton(CurvatureOptimizer):
    r"""Low-rank saddle-free Newton as a ``torch.optim.Optimizer``; the closure
    returns the loss (no ``backward()``).  See the module docstring.

    Diagnostics: ``refreshed``, ``rank`` (Ritz pairs in use), ``eigenvalue_max`` /
    ``eigenvalue_min`` (of those pairs), ``negative_eigenvalues``,
    ``subspace_fraction`` (:math:`\\|V^\\top g\\| / \\|g\\|`), ``damping``.

    Example:
        At a saddle :math:`\tfrac12 x^\top \mathrm{diag}(2, -1) x` the step divides by
        :math:`|\lambda|`: it reaches the minimum along the first axis and moves *down* the second
        (Newton's step would go to the saddle at 0):

        >>> import torch
        >>> from hpo2.optim import SaddleFreeNewton
        >>> H = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
        >>> x = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
        >>> opt = SaddleFreeNewton([x], rank=2, lanczos_iter=2, damping=0.0)
        >>> _ = opt.step(lambda: 0.5 * x @ H @ x)
        >>> x.detach().tolist()
        [0.0, 1.0]
    """

    Settings = SaddleFreeNewtonSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 0.05,
        damping: float = 0.1,
        rank: int = 8,
        lanczos_iter: int = 20,
        refresh_every: int = 10,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, damping=damping, rank=rank, lanczos_iter=lanczos_iter, refresh_every=refresh_every
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        group, state = self.param_groups[0], self.global_state
        step = int(state.get("global_step", 0)) + 1
        refresh = (step - 1) % group["refresh_every"] == 0 or "eigenvectors" not in state
        self._start_diagnostics(damping=group["damping"], refreshed=int(refresh))
        operator = None
        if refresh:
            loss_t, grads, operator, _ = self._gradient_and_curvature(closure, "hessian")
            g = self._flatten(grads)
        else:
            loss_t, g = self._value_and_grad(closure)
        loss, g_norm = host_floats(loss_t, g.norm())
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics(operator)
            return loss_t
        price = None
        if operator is not None and g_norm > 0:
            n_iter = max(group["lanczos_iter"], group["rank"])
            timed = min(n_iter, SOLVER_ITERATIONS)
            price = self._product_price(closure, operator, lambda: lanczos(operator, g, timed))
            pairs = self._top_pairs(operator, g, group["rank"], n_iter)
            if pairs is not None:
                state["eigenvalues"], state["eigenvectors"] = pairs
        state["global_step"] = step
        values, vectors = state.get("eigenvalues"), state.get("eigenvectors")
        if values is None or vectors is None:
            direction = -group["lr"] * g
        else:
            coefficients = vectors @ g
            inside = vectors.T @ (coefficients / (values.abs() + group["damping"]))
            direction = -inside - group["lr"] * (g - vectors.T @ coefficients)
            largest, smallest, negative, in_subspace = host_floats(
                values.max(), values.min(), (values < 0).sum(), coefficients.norm()
            )
            self.diagnostics.update(
                rank=int(values.numel()),
                eigenvalue_max=largest,
                eigenvalue_min=smallest,
                negative_eigenvalues=int(negative),
                subspace_fraction=in_subspace / max(g_norm, 1e-30),
            )
        self._set_flat_params(self._flat_params() + direction)
        self._finish_diagnostics(operator, price=price)
        return loss_t

    @staticmethod
    def _top_pairs(operator: LinearOperator, g: Tensor, rank: int, n_iter: int) -> tuple[Tensor, Tensor] | None:
        """The ``rank`` Ritz pairs of largest |value| from Lanczos started at ``g``;
        ``None`` if they are not finite (the previous pairs are kept)."""
        tri = lanczos(operator, g, n_iter)
        theta, s = tri.eigh()
        order = torch.argsort(theta.abs(), descending=True)[:rank]
        values = theta[order].to(g.dtype)
        vectors = s[:, order].T.to(g.dtype) @ tri.basis
        if not (torch.isfinite(values).all() and torch.isfinite(vectors).all()):
            return None
        return values, vectors
