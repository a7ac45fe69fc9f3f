"""What every hpo2 optimizer shares: the step contract and the training loop's hooks
(:class:`LoopOptimizer`, the root of every hpo2 optimizer); and what the curvature
optimizers share (:class:`CurvatureOptimizer`): settings, closure calls, flat parameter
vectors, diagnostics and non-finite handling.

Diagnostics: after each ``step`` the optimizer's ``diagnostics`` dict holds
``loss``, ``grad_norm``, ``status`` and the work done -- ``n_grad`` (gradients),
``n_hvp`` (curvature products, and building a curvature operator on a sub-batch
counted as one), ``n_loss`` (forward passes that are not a gradient's), each pass
over a fraction of the step's batch counting that fraction -- and what it cost,
``grad_equivalents``, in gradients on the step's batch: a gradient costs 1, every
other operation its price measured on the optimizer's own model and device
(:mod:`hpo2.optim.costs`; ``price_<operation>`` in the diagnostics of the step that
measured it).  With nominal prices (``CostMeter(calibrate=False)``)
``grad_equivalents = n_grad + n_hvp + n_loss / 3``.  Plus each method's own entries
(damping, CG iterations and stop reason, reduction ratio, ...).
``status`` is ``"ok"``, ``"converged"``, ``"rejected"`` (no acceptable step),
``"nonfinite_loss"`` or ``"nonfinite_grad"``; in the last three the parameters are
unchanged.  With ``raise_on_nonfinite=True`` a non-finite loss or gradient raises
``FloatingPointError`` instead.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT

from hpo2.curvature import CurvatureOperator, GGNOperator, HessianOperator, grads_or_zeros, output_hessian_for
from hpo2.optim.closure import (
    BatchEvaluation,
    DataClosure,
    StreamingClosure,
    require_batch_closure,
    require_data_closure,
)
from hpo2.optim.costs import CostMeter
from hpo2.optim.settings import OptimizerSettings
from hpo2.solvers import CGResult, host_floats

Closure = Callable[[], Tensor]
"""What every hpo2 optimizer's ``step`` takes: a function that returns the loss
(:meth:`LoopOptimizer.step`); a :class:`~hpo2.optim.closure.BatchClosure` is one."""
Probed = Callable[[Closure], object]
"""Priced work, run on the probe batch it is given (:meth:`CurvatureOptimizer._price`);
returns how many operations it did as an ``int`` (anything else: one)."""

REJECTED_RATIO = -1e30
r"""The ``reduction_ratio`` logged for a rejected step (ratio :math:`-\infty`): MLflow
stores no infinities, and any value below 1/4 reads as "the model was wrong"."""


class LoopOptimizer(Optimizer):
    """The root of every hpo2 optimizer: the contract of :meth:`step`, and the hooks
    hpo2's training loop calls, each declared here with its default (as Optuna's
    ``BaseSampler`` declares a sampler's hooks), so an optimizer states what it needs
    by overriding one:

    * :meth:`snapshot` -- called at each epoch start with the whole training set, for
      an optimizer that :attr:`takes_snapshots`; returns the gradient-equivalents it
      spent.  Default: none, and the loop builds no training-set closure for it
      (:class:`~hpo2.optim.SVRG` takes its snapshot here).
    * :attr:`charges_step_time` -- the update itself costs like a gradient
      (:class:`~hpo2.optim.MuonWithAdamW`'s Newton-Schulz iterations): its measured
      time is added to ``grad_equivalents``.  Default: False.
    * :attr:`streams` -- ``step`` takes a :class:`~hpo2.optim.closure.StreamingClosure`
      (a batch larger than memory).  Default: False.
    * :attr:`base` -- the optimizer a wrapper steps through (:class:`~hpo2.optim.SAM`'s):
      its settings, not the wrapper's, choose the data regime.  Default: None.
    * :attr:`diagnostics` -- the last step's diagnostics (:mod:`hpo2.optim.base`).

    :func:`hpo2.optim.stepping.take_step` steps an optimizer as the loop does.
    """

    charges_step_time: ClassVar[bool] = False
    streams: ClassVar[bool] = False
    base: Optimizer | None = None
    diagnostics: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``step`` without a docstring takes the contract's, so
        ``help(KFAC.step)`` shows it, also once torch has wrapped ``step`` on the
        optimizer's class for its profiler hooks (the wrapper keeps the docstring it finds)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("step")
        if own is not None and own.__doc__ is None:
            own.__doc__ = LoopOptimizer.step.__doc__

    @abstractmethod
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        """One step from the current parameters; every hpo2 optimizer keeps this contract.

        Args:
            closure: re-evaluates the model on the step's batch and returns the loss, a
                scalar tensor with its autograd graph; it does **not** call ``backward()``
                (the optimizer takes the gradient, and any curvature, itself).  It may be
                called more than once (line searches, SAM's second point).  A
                :class:`~hpo2.optim.closure.BatchClosure` (model, loss, inputs, targets)
                is needed where the step reads the model's outputs or layers:
                Gauss-Newton products (Newton-CG's ``curvature="ggn"`` or a
                ``curvature_fraction`` below 1, Hessian-free), layer statistics (K-FAC,
                Hessian-free's preconditioner), Sophia's Gauss-Newton-Bartlett estimator.
                An optimizer that :attr:`streams` (Newton-CG, Hessian-free) takes a
                :class:`~hpo2.optim.closure.StreamingClosure` there too.  The first-order
                baselines, Muon, Shampoo, SOAP, SAM and L-BFGS with
                ``initial_scaling="secant"`` also take a torch-style closure that calls
                ``backward()``.

        Returns:
            The loss at the parameters the step started from: detached (no graph), 0-d
            for a scalar loss, on the parameters' device (reading it is the caller's
            choice), equal to ``diagnostics["loss"]``.  The step's work and outcome are
            in :attr:`diagnostics`.

        Raises:
            ValueError: no closure (the first-order baselines and Muon then take
                ``torch.optim``'s ``step()`` on ``p.grad`` instead), a closure that
                returns no scalar loss with its graph, or calls ``backward()`` where the
                optimizer takes the gradient itself, or is not the kind of closure the
                step needs (the message says which and why); a loss that the sampled
                Fisher (K-FAC) or Gauss-Newton-Bartlett estimator (Sophia) has no
                likelihood for; SVRG before its first :meth:`snapshot`.
            FloatingPointError: a non-finite loss or gradient, for an optimizer built
                with ``raise_on_nonfinite=True``; otherwise the step is rejected,
                ``diagnostics["status"]`` says why and the parameters stay as they were.
        """
        # Abstract.  A torch.optim class after this one in the method order (the first-order
        # baselines: SGD(ClosureSteps, torch.optim.SGD)) takes the closure-free step() here;
        # for any other optimizer torch's Optimizer.step raises NotImplementedError.
        return super().step(closure)  # type: ignore[arg-type, return-value]  # torch's step, see above

    @property
    def takes_snapshots(self) -> bool:
        """Whether :meth:`snapshot` does anything (the loop calls it only then).  Default: False."""
        return False

    def snapshot(self, data: DataClosure, batch_size: int) -> float:
        """Called at each epoch start with a closure over the whole training set and the
        gradient batch the steps take; returns the gradient-equivalents it spent (its
        wall time is training time).  Default: nothing, at no cost."""
        return 0.0


class CurvatureOptimizer(LoopOptimizer):
    """Base class: ``Settings`` is the optimizer's settings model; ``joint`` methods
    (Newton-type: one step for all parameters together) take one param group;
    ``streams`` methods take a :class:`~hpo2.optim.closure.StreamingClosure` (their
    gradient accumulated over loader batches, their curvature on a chunk of one)."""

    Settings: ClassVar[type[OptimizerSettings]]
    joint: ClassVar[bool] = True

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
        #: prices of this optimizer's operations (:mod:`hpo2.optim.costs`); replace it to fix them
        self.costs = CostMeter()
        self._spent = 0.0  # the step's gradient-equivalents so far

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
        comes out of the operator's double-backward graph, at the price of a
        ``hessian_gradient`` (a backward pass that keeps its graph).  Otherwise the
        gradient costs one, and the operator a ``curvature_setup``: the chunk's
        forward pass and the operator's own backward pass.
        """
        streamed = self._streamed(closure)
        if streamed is not None:
            return self._streamed_gradient_and_curvature(streamed, curvature, fraction)
        if curvature == "hessian" and fraction == 1.0:
            loss_tensor = self._call_closure(closure)
            with torch.enable_grad():
                hessian = HessianOperator(loss_tensor, self._params)
            operator: CurvatureOperator = hessian
            self._store_grads(hessian.gradient)
            self._count("n_grad", cost=self._hessian_gradient_price(closure))
            return hessian.loss.detach(), hessian.gradient, operator, 1.0
        why = "Gauss-Newton curvature" if curvature == "ggn" else "a curvature minibatch"
        batch = require_batch_closure(closure, type(self).__name__, why)
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            full = batch.evaluate()
            found = torch.autograd.grad(full.loss, self._params, retain_graph=fraction == 1.0, allow_unused=True)
            grads = grads_or_zeros(found, self._params)
            self._store_grads(grads)
            self._count("n_grad")

            def build(_: Closure) -> CurvatureOperator:
                return self._operator(curvature, batch.loss_fn, full if fraction == 1.0 else batch.evaluate(fraction))

            operator = build(batch)
            seen = batch.chunk_size(fraction) / batch.batch_size  # the chunk's samples, counted exactly
            self._count_setup(operator, seen, fraction != 1.0, self._price("curvature_setup", build, batch))
        return full.loss.detach(), grads, operator, seen

    def _streamed_gradient_and_curvature(
        self, closure: StreamingClosure, curvature: str, fraction: float
    ) -> tuple[Tensor, list[Tensor], CurvatureOperator, float]:
        """:meth:`_gradient_and_curvature` on a streamed batch: the gradient accumulated
        in one pass, the operator on chunk 0 (at most one loader batch)."""
        require_data_closure(closure, type(self).__name__, "curvature on a chunk")  # the dropout warning
        loss, grads = self._streamed_gradient(closure)
        seen = closure.chunk_size(fraction) / closure.batch_size

        def build(_: Closure) -> CurvatureOperator:
            return self._operator(curvature, closure.loss_fn, closure.evaluate(seen))

        with torch.enable_grad():
            operator = build(closure)
            self._count_setup(operator, seen, True, self._price("curvature_setup", build, closure))
        return loss, grads, operator, seen

    def _count_setup(self, operator: CurvatureOperator, fraction: float, forward: bool, price: float | None) -> None:
        """Count building ``operator`` on ``fraction`` of the batch (its own backward
        pass, and its ``forward`` pass when it has one), at ``price`` when measured."""
        nominal = operator.setup_cost * fraction + (fraction / 3 if forward else 0.0)
        self._count("n_hvp", operator.setup_cost * fraction, nominal if price is None else price)
        if forward:
            self._count("n_loss", fraction, 0.0)  # priced with the operator

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
        self._count("n_loss", cost=self._batch_loss_price(closure))
        return value

    # -- costs (hpo2.optim.costs)
    def _price(self, name: str, operation: Probed, closure: Closure | None, per_batch: bool = False) -> float | None:
        """The measured price of one ``name`` operation in gradients on the step's batch,
        measured at its first use and kept; ``None`` when the meter keeps nominal prices.

        ``operation(probe)`` does the work once, counting nothing.  ``probe`` is the closure whose
        gradient is timed beside it: the step's batch, or for a streamed batch its first
        loader batch (a gradient on the batch is then a pass over ``B / b`` of those,
        its loader reads aside).  ``per_batch`` work (a loss on the batch) runs on the
        probe and is priced by its ratio to the probe's gradient; other work (on the
        curvature chunk, on a built operator) is the same whatever the probe."""
        meter = self.costs
        if name in meter.prices:
            return meter.prices[name]
        if not meter.calibrate or closure is None:
            return None
        probe, scale = self._probe(closure)
        params = self._params

        def gradient() -> object:
            with torch.enable_grad():
                return torch.autograd.grad(probe(), params, allow_unused=True)

        device = params[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            calibration = meter.measure(lambda: operation(probe), gradient, device)
        price = calibration.ratio if per_batch else calibration.ratio / scale
        meter.prices[name] = price
        self.diagnostics[f"price_{name}"] = price
        self.diagnostics["calibration_seconds"] = (
            float(self.diagnostics.get("calibration_seconds", 0.0)) + calibration.seconds)
        return price

    @staticmethod
    def _probe(closure: Closure) -> tuple[Closure, float]:
        """The batch a calibration times its gradient on, and how many of its gradients
        make one on the step's batch (:meth:`_price`)."""
        if isinstance(closure, StreamingClosure):
            piece = closure.take(range(min(closure.stream.piece_size, closure.batch_size)))
            return piece, closure.batch_size / piece.batch_size
        return closure, 1.0

    def _batch_loss_price(self, closure: Closure | None) -> float | None:
        """Price of a forward-only loss on the step's batch, read on the host (line searches)."""

        def forward(probe: Closure) -> object:
            with torch.no_grad():
                return host_floats(probe().detach())

        return self._price("batch_loss", forward, closure, per_batch=True)

    def _hessian_gradient_price(self, closure: Closure | None) -> float | None:
        """Price of the gradient by a backward pass that keeps its graph for Hessian products."""

        def build(probe: Closure) -> object:
            with torch.enable_grad():
                return HessianOperator(probe(), self._params)

        return self._price("hessian_gradient", build, closure, per_batch=True)

    def _product_price(
        self, closure: Closure | None, operator: CurvatureOperator, solve: Callable[[], object]
    ) -> float | None:
        """Price of one product of ``operator`` as the step's solver takes it: ``solve()``
        runs a few solver iterations on it (the products and the solver's vector work),
        and the products it used divide the time.  ``operator``'s count is left as it was."""
        before = operator.n_products

        def run(_: Closure) -> int:
            start = operator.n_products
            solve()
            return operator.n_products - start

        try:
            return self._price("product", run, closure)
        finally:
            operator.n_products = before

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
        self._spent = 0.0

    def _count(self, key: str, n: float = 1, cost: float | None = None) -> None:
        """Add ``n`` to a work counter (a pass over a fraction of the step's batch counts
        that fraction) and its cost to the step's gradient-equivalents: ``cost`` when
        measured, else nominally ``n`` (``n / 3`` for a forward pass, ``n_loss``)."""
        self.diagnostics[key] = float(self.diagnostics.get(key, 0)) + n
        self._spent += cost if cost is not None else n / 3 if key == "n_loss" else n

    def _finish_diagnostics(
        self, operator: CurvatureOperator | None = None, batch_fraction: float = 1.0, price: float | None = None
    ) -> dict[str, float | int | str]:
        """Count the operator's products (each on ``batch_fraction`` of the batch, at
        ``price`` when measured) and total the gradient-equivalents."""
        d = self.diagnostics
        if operator is not None:
            n = operator.n_products
            self._count("n_hvp", n * batch_fraction, None if price is None else n * price)
        d["grad_equivalents"] = self._spent
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
