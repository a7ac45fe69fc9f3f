r"""Sharpness-aware minimization as a setting of every optimizer.

SAM (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-aware minimization for
efficiently improving generalization", ICLR 2021, eq. 2-3) minimises
:math:`\max_{\|\epsilon\| \le \rho} L(w + \epsilon)` with the one-step ascent

.. math::
   \hat\epsilon(w) = \rho\, \frac{g}{\|g\|_2}, \qquad g = \nabla L(w),

and then steps with the gradient at the perturbed point,
:math:`\nabla L(w)\big|_{w + \hat\epsilon}`, from :math:`w`.  ASAM (Kwon, Kim, Park
& Choi, "ASAM: adaptive sharpness-aware minimization for scale-invariant learning
of deep neural networks", ICML 2021, eq. 8) makes the ball scale-invariant with
:math:`T_w = \mathrm{diag}(|w|) + \eta` on the weights and :math:`T = I` on biases
and normalization parameters, as Kwon et al. do (here: every parameter with at most
one dimension):

.. math::
   \hat\epsilon(w) = \rho\, \frac{T_w^2\, g}{\|T_w\, g\|_2}.

Config: ``sam: {rho, adaptive, eta}`` inside any optimizer's ``settings``::

    optimizer: {name: adam, settings: {lr: 0.001, sam: {rho: 0.05}}}

:func:`hpo2.optim.from_config` then wraps the base optimizer in :class:`SAM`.

What SAM means for each kind of base optimizer:

* **first-order** (``torch.optim`` SGD, Adam, AdamW, ...): exactly Foret et al.'s
  Algorithm 1 -- gradient at :math:`w`, ascent to :math:`w + \hat\epsilon`,
  gradient there, back to :math:`w`, then the base optimizer's own ``step()`` with
  that gradient in ``p.grad`` (its momentum, second moments and weight decay act
  at :math:`w`).
* **closure-based curvature methods** (Newton-CG, Hessian-free, L-BFGS,
  AdaHessian, Sophia, SVRG, ...): the perturbation is applied *before the
  closure's gradient*: the base optimizer's whole ``step(closure)`` runs at
  :math:`w + \hat\epsilon` -- its gradient, its curvature products or diagonal
  estimates, its line search / trust-region trial points all evaluate there --
  and the displacement :math:`\Delta` it makes is applied from :math:`w`:
  :math:`w \leftarrow w + \Delta`.  For a first-order method this is the same
  update; for a Newton step it is :math:`-H(w+\hat\epsilon)^{-1} g(w+\hat\epsilon)`
  from :math:`w`.  A rejected step (:math:`\Delta = 0`) leaves :math:`w`.

Cost: one extra gradient per step (the ascent gradient at :math:`w`), counted in
``n_grad`` and ``grad_equivalents``.  ``diagnostics["loss"]`` is the loss at
:math:`w` (the training loss); ``sam_perturbed_loss`` the loss at
:math:`w + \hat\epsilon`, whose difference is the step's sharpness estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor
from torch.optim import Optimizer

from hpo2.curvature import grads_or_zeros
from hpo2.optim.base import Closure, CurvatureOptimizer, LoopOptimizer
from hpo2.optim.closure import DataClosure
from hpo2.optim.settings import Choice, FloatRange, OptimizerSettings, document_settings
from hpo2.solvers import host_floats

SAM_KEY = "sam"


class SAMSettings(OptimizerSettings):
    """Settings of :class:`SAM`: Foret et al.'s default radius; ASAM's :math:`\\eta`."""

    family: ClassVar[str] = "wrapper"
    reference: ClassVar[str] = "Foret et al., ICLR 2021 (arXiv 2010.01412); ASAM: Kwon et al., ICML 2021"

    rho: Annotated[float, Field(gt=0), FloatRange(0.01, 2.0, log=True)] = 0.05
    """Radius of the ascent step (Foret et al. 2021 default 0.05; ASAM uses larger, e.g. 0.5-2)."""
    adaptive: Annotated[bool, Choice((False, True))] = False
    """ASAM's scale-invariant ball T_w = |w| + eta on weights, T = I on 1-d parameters (Kwon et al. 2021)."""
    eta: Annotated[float, Field(ge=0)] = 0.01
    """ASAM's offset eta in T_w = |w| + eta."""


def ascent_step(
    params: Sequence[Tensor], grads: Sequence[Tensor], rho: float, adaptive: bool = False, eta: float = 0.01
) -> list[Tensor]:
    r""":math:`\hat\epsilon = \rho g/\|g\|` (SAM) or :math:`\rho T^2 g/\|T g\|` with
    :math:`T = |w| + \eta` on parameters of two or more dimensions and :math:`T = I` on
    1-d ones, biases and normalization scales (ASAM), per parameter tensor; zero where
    :math:`g = 0`."""
    scales = [p.detach().abs() + eta if adaptive and p.dim() > 1 else None for p in params]
    scaled = [g if t is None else t * g for g, t in zip(grads, scales)]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
    factor = rho / norm.clamp_min(1e-12)
    return [factor * (s if t is None else t * s) for s, t in zip(scaled, scales)]


def _norm(tensors: list[Tensor]) -> Tensor:
    """The Euclidean norm of the tensors taken together, on their device."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


@document_settings
class SAM(LoopOptimizer):
    r"""Wraps ``base`` (any ``torch.optim.Optimizer``; see the module docstring).

    ``step(closure)`` needs a closure that returns the loss (calling ``backward()``
    in it is allowed but not needed).  SAM keeps no state of its own:
    ``state_dict()`` is ``{"base": base.state_dict(), "sam": settings}``.

    Example:
        Around SGD: the gradient is taken at :math:`w + \rho g/\|g\|` and applied at :math:`w`;
        for :math:`L = \tfrac12\|w\|^2` at :math:`w = (3, 4)` that is :math:`w - 0.1 \cdot 1.1\, w`:

        >>> import torch
        >>> from hpo2.optim import SAM
        >>> w = torch.tensor([3.0, 4.0], requires_grad=True)
        >>> opt = SAM(torch.optim.SGD([w], lr=0.1), rho=0.5)
        >>> _ = opt.step(lambda: 0.5 * (w**2).sum())
        >>> torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) * (1 - 0.1 * 1.1))
        True
    """

    Settings = SAMSettings
    base: Optimizer

    def __init__(self, base: Optimizer, *, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01) -> None:
        self.settings = SAMSettings.parse(dict(rho=rho, adaptive=adaptive, eta=eta), where="sam")
        self.base = base
        super().__init__([p for group in base.param_groups for p in group["params"]], self.settings.model_dump())
        # One set of groups and state: the base optimizer's.
        self.param_groups = base.param_groups
        self.state = base.state
        self._params = [p for group in base.param_groups for p in group["params"]]
        self.diagnostics: dict[str, Any] = {}

    @property
    def curvature_base(self) -> bool:
        return isinstance(self.base, CurvatureOptimizer)

    def _gradient(self, closure: Closure) -> tuple[Tensor, list[Tensor]]:
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if any(p.grad is not None for p in self._params):
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self._params]
        else:
            found = torch.autograd.grad(loss, self._params, allow_unused=True)
            grads = grads_or_zeros(found, self._params)
        return loss.detach(), grads

    @torch.no_grad()
    def _restore(self, saved: list[Tensor]) -> None:
        for p, w in zip(self._params, saved):
            p.copy_(w)

    @torch.no_grad()
    def _shift(self, epsilon: list[Tensor], sign: float) -> None:
        for p, e in zip(self._params, epsilon):
            p.add_(e, alpha=sign)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        if closure is None:
            raise ValueError("SAM.step needs a closure that returns the loss (it evaluates the gradient twice)")
        loss_t, grads = self._gradient(closure)
        loss, grad_norm = host_floats(loss_t, _norm(grads))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            status = "nonfinite_loss" if not math.isfinite(loss) else "nonfinite_grad"
            self.diagnostics = {
                "loss": loss,
                "grad_norm": grad_norm,
                "status": status,
                "n_grad": 1,
                "grad_equivalents": 1.0,
            }
            return loss_t
        s = self.settings
        epsilon = ascent_step(self._params, grads, s.rho, s.adaptive, s.eta)
        saved = [p.detach().clone() for p in self._params]
        self._shift(epsilon, +1.0)
        base = self.base
        if isinstance(base, CurvatureOptimizer):
            base.step(closure)
            diag = dict(base.diagnostics)
            perturbed_loss = float(diag.get("loss", math.nan))
            if diag.get("status") in ("ok", "converged"):
                self._shift(epsilon, -1.0)  # w + eps + Delta  ->  w + Delta
            else:
                self._restore(saved)  # no step: exactly w
            (epsilon_norm,) = host_floats(_norm(epsilon))
        else:
            perturbed_loss_t, perturbed_grads = self._gradient(closure)
            self._restore(saved)  # exactly w, not w + eps - eps
            grads_finite = torch.stack([torch.isfinite(g).all() for g in perturbed_grads]).all()
            perturbed_loss, grads_ok, epsilon_norm = host_floats(perturbed_loss_t, grads_finite, _norm(epsilon))
            finite = math.isfinite(perturbed_loss) and bool(grads_ok)
            if finite:
                for p, g in zip(self._params, perturbed_grads):
                    p.grad = g
                self.base.step()
            diag = {"status": "ok" if finite else "nonfinite_grad", "n_grad": 1, "grad_equivalents": 1.0}
        diag["n_grad"] = int(diag.get("n_grad", 0)) + 1
        diag["grad_equivalents"] = float(diag.get("grad_equivalents", 0.0)) + 1.0
        diag.update(loss=loss, grad_norm=grad_norm, sam_perturbed_loss=perturbed_loss, sam_epsilon_norm=epsilon_norm)
        self.diagnostics = diag
        return loss_t

    @property
    def takes_snapshots(self) -> bool:
        return isinstance(self.base, LoopOptimizer) and self.base.takes_snapshots

    def snapshot(self, data: DataClosure, batch_size: int) -> float:
        """The base's snapshot (:meth:`LoopOptimizer.snapshot`); none for a ``torch.optim`` base."""
        return self.base.snapshot(data, batch_size) if isinstance(self.base, LoopOptimizer) else 0.0

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), SAM_KEY: self.settings.model_dump()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"base", SAM_KEY}:
            raise ValueError(f"a SAM state_dict has keys 'base' and 'sam', got {sorted(state_dict)}")
        self.settings = SAMSettings.parse(state_dict[SAM_KEY], where="state_dict.sam")
        self.base.load_state_dict(state_dict["base"])
