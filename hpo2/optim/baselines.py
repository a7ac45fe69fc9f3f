"""First-order baselines from ``torch.optim``, declared like hpo2's own optimizers
so that every study compares against them under the same tuning budget.

**Both closure protocols.**  ``torch.optim``'s ``step(closure)`` expects the closure
to call ``backward()``; hpo2's closures (:class:`~hpo2.optim.BatchClosure`) return
the loss and do not.  Handed an hpo2 closure, a plain ``torch.optim.SGD`` would step
on stale or missing gradients: it trains nothing, silently.  The baselines here
(:class:`SGD`, :class:`Adam`, :class:`AdamW`, and :class:`~hpo2.optim.MuonWithAdamW`)
take either kind (:func:`first_order_closure_step`):

* a closure that calls ``backward()`` itself (torch style) behaves exactly as with
  ``torch.optim``: its gradients are used as they are (nothing is zeroed or added);
* a closure that only returns the loss (hpo2 style) gets the gradients zeroed and
  its loss backpropagated, once.

Either way the step is skipped when the loss or the gradient is not finite
(``diagnostics["status"]``), as hpo2's own optimizers skip it.  ``step()`` without
a closure is ``torch.optim``'s own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from hpo2.optim.base import Closure, LoopOptimizer
from hpo2.optim.settings import FloatRange, OptimizerSettings
from hpo2.solvers import host_floats


class SGDSettings(OptimizerSettings):
    """SGD with (heavy-ball or Nesterov) momentum; DeepOBS's momentum baseline."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Polyak 1964; Sutskever et al., ICML 2013 (Nesterov momentum)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 1.0, log=True)] = 0.01
    """Learning rate."""
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.99)] = 0.9
    """Heavy-ball (or Nesterov) momentum."""
    nesterov: bool = False
    """Use Nesterov momentum."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """L2 weight decay added to the gradient."""


class AdamSettings(OptimizerSettings):
    """Adam (Kingma & Ba 2015) with its paper defaults; weight decay coupled as in
    ``torch.optim.Adam``."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Kingma & Ba, ICLR 2015 (arXiv 1412.6980)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    """Learning rate (Kingma & Ba: 1e-3)."""
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.9
    """Decay of the gradient's moving average."""
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.9999, log=True)] = 0.999
    """Decay of the squared gradient's moving average."""
    eps: Annotated[float, Field(gt=0)] = 1e-8
    """Added to the denominator's square root."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """L2 weight decay added to the gradient (coupled, as torch.optim.Adam)."""


class AdamWSettings(AdamSettings):
    """AdamW (Loshchilov & Hutter 2019): decoupled weight decay, searched."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Loshchilov & Hutter, ICLR 2019 (arXiv 1711.05101)"

    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-5, 0.3, log=True)] = 1e-2
    """Decoupled weight decay (Loshchilov & Hutter 2019)."""


def _gradient_marks(params: list[Tensor]) -> list[tuple[Tensor, int] | None]:
    """Each parameter's current gradient (kept alive, so a new one cannot reuse its id) and its version."""
    return [None if p.grad is None else (p.grad, p.grad._version) for p in params]


def closure_loss(closure: Closure, params: list[Tensor]) -> Tensor:
    """Run ``closure`` (grad enabled) and return its loss, with the gradient of that
    loss in ``p.grad`` whichever protocol the closure follows (module docstring): if
    it left every ``p.grad`` untouched, the gradients are zeroed and its loss is
    backpropagated here."""
    before = _gradient_marks(params)
    with torch.enable_grad():
        loss = closure()
    after = _gradient_marks(params)
    untouched = all(
        (a is None and b is None) or (a is not None and b is not None and a[0] is b[0] and a[1] == b[1])
        for a, b in zip(before, after)
    )
    if untouched:
        if not isinstance(loss, Tensor) or loss.numel() != 1 or loss.grad_fn is None:
            raise ValueError(
                "the closure must return the scalar loss tensor (with its graph) or call loss.backward() itself; "
                f"got {type(loss).__name__}"
            )
        for p in params:
            p.grad = None
        loss.backward()
    return loss


def first_order_closure_step(
    optimizer: torch.optim.Optimizer, closure: Closure, step: Callable[[], object]
) -> tuple[Tensor, dict[str, Any]]:
    """One first-order step on ``closure``'s loss (:func:`closure_loss`), then ``step()``
    (the optimizer's own update on ``p.grad``), and what it cost: one gradient, plus,
    for an optimizer whose ``step`` does work comparable to a gradient
    (``charges_step_time = True``, e.g. Muon's Newton-Schulz iterations), the step's
    measured seconds in units of this step's own gradient seconds, so a budget in
    gradient-equivalents does not flatter it.

    A non-finite loss or gradient (an overflow in the backward pass can leave the
    loss finite) skips ``step()``, as hpo2's own optimizers reject such a step, with
    status ``nonfinite_loss`` or ``nonfinite_grad``: the parameters stay finite.
    Returns the loss and the diagnostics ``loss``, ``grad_norm``, ``status``,
    ``n_grad`` and ``grad_equivalents``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    started = time.perf_counter()
    loss = closure_loss(closure, params)
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
    value, norm = host_floats(loss, grad_norm)  # one transfer; waits for the backward on a GPU
    grad_seconds = time.perf_counter() - started
    status = "nonfinite_loss" if not math.isfinite(value) else "nonfinite_grad" if not math.isfinite(norm) else "ok"
    cost = 1.0
    if status == "ok":
        started = time.perf_counter()
        step()
        if isinstance(optimizer, LoopOptimizer) and optimizer.charges_step_time:
            cost += (time.perf_counter() - started) / max(grad_seconds, 1e-9)
    return loss.detach(), {"loss": value, "grad_norm": norm, "status": status, "n_grad": 1, "grad_equivalents": cost}


class ClosureSteps(LoopOptimizer):
    """Mixin for a ``torch.optim`` optimizer (listed after it, as in
    ``SGD(ClosureSteps, torch.optim.SGD)``): ``step(closure)`` takes either closure
    protocol (module docstring) and leaves its ``diagnostics``; ``step()`` is torch's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.diagnostics = {}

    def step(self, closure: Closure | None = None) -> Tensor | None:  # type: ignore[override]  # also torch's step()
        if closure is None:
            return super().step()
        loss, self.diagnostics = first_order_closure_step(self, closure, super().step)
        return loss


class SGD(ClosureSteps, torch.optim.SGD):
    """``torch.optim.SGD`` that also takes hpo2's closures (module docstring)."""


class Adam(ClosureSteps, torch.optim.Adam):
    """``torch.optim.Adam`` that also takes hpo2's closures (module docstring)."""


class AdamW(ClosureSteps, torch.optim.AdamW):
    """``torch.optim.AdamW`` that also takes hpo2's closures (module docstring)."""


def build_sgd(params: Iterable[Any], s: SGDSettings) -> LoopOptimizer:
    return SGD(params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay)


def build_adam(params: Iterable[Any], s: AdamSettings) -> LoopOptimizer:
    cls = AdamW if isinstance(s, AdamWSettings) else Adam
    return cls(params, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay)
