"""What every hpo2 optimizer shares: settings, closure calls, flat parameter
vectors, diagnostics and non-finite handling.

Diagnostics: after each ``step`` the optimizer's ``diagnostics`` dict holds
``loss``, ``grad_norm``, ``status`` and the work done -- ``n_grad`` (gradients),
``n_hvp`` (curvature products, and building a Gauss-Newton operator counted as
one), ``n_loss`` (forward-only evaluations) and
``grad_equivalents = n_grad + n_hvp + n_loss / 3`` (a curvature product costs
about one gradient, a forward pass about a third of one; a pass over a fraction of
the step's batch counts that fraction) -- plus each method's
own entries (damping, CG iterations and stop reason, reduction ratio, ...).
``status`` is ``"ok"``, ``"converged"``, ``"rejected"`` (no acceptable step),
``"nonfinite_loss"`` or ``"nonfinite_grad"``; in the last three the parameters are
unchanged.  With ``raise_on_nonfinite=True`` a non-finite loss or gradient raises
``FloatingPointError`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from hpo2.curvature import CurvatureOperator, GGNOperator, HessianOperator, grads_or_zeros, output_hessian_for
from hpo2.optim.closure import BatchEvaluation, StreamingClosure, require_batch_closure, require_data_closure
from hpo2.optim.settings import OptimizerSettings
from hpo2.solvers import CGResult

Closure = Callable[[], Tensor]

REJECTED_RATIO = -1e30
r"""The ``reduction_ratio`` logged for a rejected step (ratio :math:`-\infty`): MLflow
stores no infinities, and any value below 1/4 reads as "the model was wrong"."""


class CurvatureOptimizer(Optimizer):
    """Base class: ``Settings`` is the optimizer's settings model; ``joint`` methods
    (Newton-type: one step for all parameters together) take one param group;
    ``streams`` methods take a :class:`~hpo2.optim.closure.StreamingClosure` (their
    gradient accumulated over loader batches, their curvature on a chunk of one)."""

    Settings: ClassVar[type[OptimizerSettings]]
    joint: ClassVar[bool] = True
    streams: ClassVar[bool] = False

    def __init__(self, params: ParamsT, settings: Mapping[str, Any], *, raise_on_nonfinite: bool = False) -> None:
        """Validate ``settings`` (each subclass passes its keyword arguments, which
        mirror its ``Settings`` model) and set up the one-group optimizer state."""
        self.settings = self.Settings.parse(dict(settings), where=type(self).__name__)
        super().__init__(params, self.settings.model_dump())
        if self.joint and len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group (it steps all parameters jointly)")
        self._params = [p for group in self.param_groups for p in group["params"]]
        self.raise_on_nonfinite = raise_on_nonfinite
        self.diagnostics: dict[str, float | int | str] = {}

    # -- state shared by the whole optimizer (torch keeps it with the first parameter,
    #    so state_dict / load_state_dict carry it)
    @property
    def global_state(self) -> dict[str, Any]:
        return self.state[self._params[0]]

    # -- closures
    def _call_closure(self, closure: Closure | None, allow_backward: bool = False) -> Tensor:
        """Run the closure with grad enabled and check it returned a scalar loss with graph."""
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the loss")
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"the closure must return the scalar loss tensor, got {type(loss).__name__}")
        called_backward = any(p.grad is not None for p in self._params)
        if called_backward and not allow_backward:
            raise ValueError(
                f"{type(self).__name__} takes the gradient itself: the closure must return the loss "
                "without calling loss.backward()"
            )
        if loss.grad_fn is None and not called_backward:
            raise ValueError(
                "the closure's loss has no autograd graph: compute it from the parameters, outside no_grad"
            )
        return loss

    def _streamed(self, closure: Closure | None) -> StreamingClosure | None:
        """``closure`` when it is a streaming closure this optimizer takes; None otherwise
        (a streaming closure then fails in :meth:`_call_closure`, with its reason)."""
        return closure if self.streams and isinstance(closure, StreamingClosure) else None

    def _value_and_grad(self, closure: Closure | None, allow_backward: bool = False) -> tuple[Tensor, Tensor]:
        """Loss (detached, on the device) and flat gradient at the current parameters (one
        gradient evaluation; over a streamed batch, accumulated in one pass).  With
        ``allow_backward`` a torch-style closure that calls ``backward()`` works too."""
        streamed = self._streamed(closure)
        if streamed is not None:
            value, grads = self._streamed_gradient(streamed)
            return value, self._flatten(grads)
        loss = self._call_closure(closure, allow_backward)
        if any(p.grad is not None for p in self._params):
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self._params]
        else:
            found = torch.autograd.grad(loss, self._params, allow_unused=True)
            grads = grads_or_zeros(found, self._params)
            self._store_grads(grads)
        self._count("n_grad")
        return loss.detach(), self._flatten(grads)

    def _gradient_and_curvature(
        self, closure: Closure | None, curvature: str, fraction: float = 1.0
    ) -> tuple[Tensor, list[Tensor], CurvatureOperator, float]:
        """Loss (detached) and gradient on the whole batch, the curvature operator
        (``"hessian"`` or ``"ggn"``) on the batch or its first ``fraction``, and the
        fraction of the batch the operator sees: its ``ceil(fraction * batch)`` samples
        over the batch (a streamed batch's chunk holds at most one loader batch, see
        :class:`~hpo2.optim.closure.StreamingClosure`).

        For the Hessian on the whole batch one graph serves both: the gradient
        comes out of the operator's double-backward graph for free.
        """
        streamed = self._streamed(closure)
        if streamed is not None:
            return self._streamed_gradient_and_curvature(streamed, curvature, fraction)
        if curvature == "hessian" and fraction == 1.0:
            loss_tensor = self._call_closure(closure)
            with torch.enable_grad():
                hessian = HessianOperator(loss_tensor, self._params)
            operator: CurvatureOperator = hessian
            grads = hessian.gradient
            loss = hessian.loss.detach()
        else:
            why = "Gauss-Newton curvature" if curvature == "ggn" else "a curvature minibatch"
            batch = require_batch_closure(closure, type(self).__name__, why)
            for p in self._params:
                p.grad = None
            with torch.enable_grad():
                full = batch.evaluate()
                found = torch.autograd.grad(full.loss, self._params, retain_graph=fraction == 1.0, allow_unused=True)
                grads = grads_or_zeros(found, self._params)
                part = full if fraction == 1.0 else batch.evaluate(fraction)
                seen = batch.chunk_size(fraction) / batch.batch_size  # the chunk's samples, counted exactly
                if fraction != 1.0:
                    self._count("n_loss", seen)  # the curvature chunk's own forward pass
                operator = self._operator(curvature, batch.loss_fn, part)
            loss = full.loss.detach()
            fraction = seen
        self._count("n_grad")
        self._store_grads(grads)
        return loss, grads, operator, fraction

    def _streamed_gradient_and_curvature(
        self, closure: StreamingClosure, curvature: str, fraction: float
    ) -> tuple[Tensor, list[Tensor], CurvatureOperator, float]:
        """:meth:`_gradient_and_curvature` on a streamed batch: the gradient accumulated
        in one pass, the operator on chunk 0 (at most one loader batch)."""
        require_data_closure(closure, type(self).__name__, "curvature on a chunk")  # the dropout warning
        loss, grads = self._streamed_gradient(closure)
        seen = closure.chunk_size(fraction) / closure.batch_size
        with torch.enable_grad():
            part = closure.evaluate(seen)
            operator = self._operator(curvature, closure.loss_fn, part)
        self._count("n_loss", seen)  # the chunk's own forward pass
        return loss, grads, operator, seen

    def _streamed_gradient(self, closure: StreamingClosure) -> tuple[Tensor, list[Tensor]]:
        """Loss and gradient accumulated over one pass of a streamed batch: one
        gradient on the batch (the loop counts it in loader batches)."""
        for p in self._params:
            p.grad = None
        value, grads = closure.value_and_grad(self._params)
        self._store_grads(grads)
        self._count("n_grad")
        return value, grads

    def _operator(self, curvature: str, loss_fn: Callable[..., Tensor], part: BatchEvaluation) -> CurvatureOperator:
        """The Hessian or Gauss-Newton operator on one evaluated (chunk of a) batch."""
        if curvature == "hessian":
            return HessianOperator(part.loss, self._params)
        outputs = part.output_tensor(type(self).__name__, "Gauss-Newton curvature")
        return GGNOperator(outputs, self._params, output_hessian_for(loss_fn, outputs, part.targets))

    def _loss(self, closure: Closure) -> Tensor:
        """Loss at the current parameters, forward only (stays on the device)."""
        streamed = self._streamed(closure)
        with torch.no_grad():
            value = streamed.loss_value() if streamed is not None else closure().detach()
        self._count("n_loss")
        return value

    # -- flat parameter vectors
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    def _set_flat_params(self, flat: Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for p in self._params:
                n = p.numel()
                p.copy_(flat[offset : offset + n].view_as(p))
                offset += n

    def _move_to(self, x0: Tensor, t: float, direction: Tensor) -> None:
        """Set the parameters to :math:`x_0 + t d`; ``t == 0`` restores :math:`x_0`
        exactly, even where ``direction`` is not finite (a rejected step)."""
        self._set_flat_params(x0 if t == 0.0 else x0 + t * direction)

    @staticmethod
    def _flatten(tensors: Iterable[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _store_grads(self, grads: Iterable[Tensor]) -> None:
        """Leave the gradient in ``p.grad`` for users who read it after the step."""
        for p, g in zip(self._params, grads):
            p.grad = g.detach()

    # -- diagnostics
    def _start_diagnostics(self, **entries: float | int | str) -> None:
        self.diagnostics = {"status": "ok", "n_grad": 0, "n_hvp": 0, "n_loss": 0, **entries}

    def _count(self, key: str, n: float = 1) -> None:
        """Add ``n`` to a work counter; a pass over a fraction of the step's batch
        counts that fraction."""
        self.diagnostics[key] = float(self.diagnostics.get(key, 0)) + n

    def _finish_diagnostics(
        self, operator: CurvatureOperator | None = None, batch_fraction: float = 1.0
    ) -> dict[str, float | int | str]:
        """Add the operator's products (each on ``batch_fraction`` of the batch) and
        total the gradient-equivalents."""
        d = self.diagnostics
        if operator is not None:
            d["n_hvp"] = float(d["n_hvp"]) + (operator.n_products + operator.setup_cost) * batch_fraction
        d["grad_equivalents"] = float(d["n_grad"]) + float(d["n_hvp"]) + float(d["n_loss"]) / 3
        return d

    def _record_cg(self, result: CGResult) -> None:
        """The CG solve's iterations, stop reason and whether it met negative curvature."""
        self.diagnostics.update(
            cg_iters=result.n_iter,
            cg_stop=result.stop_reason,
            negative_curvature=int(result.negative_curvature is not None),
        )

    def _record_ratio(self, rho: float, damping_next: float) -> None:
        """The reduction ratio (:data:`REJECTED_RATIO` when not finite) and the next damping."""
        ratio = rho if math.isfinite(rho) else REJECTED_RATIO
        self.diagnostics.update(reduction_ratio=ratio, damping_next=damping_next)

    def _check_finite(self, loss: float, grad_norm: float) -> bool:
        """Record a non-finite loss or gradient (the step is then rejected); raise if asked."""
        status = (
            "nonfinite_loss" if not math.isfinite(loss) else "nonfinite_grad" if not math.isfinite(grad_norm) else None
        )
        if status is None:
            return True
        self.diagnostics["status"] = status
        if self.raise_on_nonfinite:
            raise FloatingPointError(
                f"{type(self).__name__}: {status.replace('_', ' ')} (loss={loss}, grad norm={grad_norm})"
            )
        return False


class ParameterRay:
    r""":math:`\varphi(t) = f(x_0 + t d)` over an optimizer's parameters, the
    :class:`~hpo2.solvers.Ray` its line search walks.

    ``value`` evaluates the loss forward only; ``value_and_grad`` (for searches that
    need slopes) keeps each gradient met in :attr:`evaluated` by step, so the caller
    reuses the one at the accepted step.  Values stay on the device.
    """

    def __init__(
        self,
        optimizer: CurvatureOptimizer,
        x0: Tensor,
        direction: Tensor,
        value: Callable[[], Tensor],
        value_and_grad: Callable[[], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.optimizer, self.x0, self.direction = optimizer, x0, direction
        self._value, self._value_and_grad = value, value_and_grad
        self.evaluated: dict[float, tuple[Tensor, Tensor]] = {}

    def value(self, t: float) -> Tensor:
        self.optimizer._move_to(self.x0, t, self.direction)
        return self._value()

    def value_and_slope(self, t: float) -> tuple[Tensor, Tensor]:
        if self._value_and_grad is None:
            raise ValueError("this ray has no gradient: pass value_and_grad for a search that needs slopes")
        self.optimizer._move_to(self.x0, t, self.direction)
        self.evaluated[t] = self._value_and_grad()
        value, grad = self.evaluated[t]
        return value, torch.dot(grad, self.direction)
