"""One step, and one epoch-start snapshot, as hpo2's training loop takes them, for any
optimizer: the loop (:mod:`hpo2.train`) and the contract test
(``tests/optim/test_contract.py``) both call these, so they dispatch the same way.

An hpo2 optimizer (:class:`~hpo2.optim.base.LoopOptimizer`) declares the hooks it
needs; any other ``torch.optim`` optimizer gets the defaults: a first-order step on
``p.grad`` and no snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from hpo2.optim.base import Closure, LoopOptimizer
from hpo2.optim.baselines import first_order_closure_step
from hpo2.optim.closure import DataClosure


def take_step(optimizer: Optimizer, closure: Closure) -> tuple[Tensor, dict[str, Any]]:
    """Step ``optimizer`` once on ``closure`` (it returns the loss and does not call
    ``backward()``): the loss at the starting parameters, detached and on their device,
    and a copy of the step's diagnostics.

    An hpo2 optimizer takes the step itself (:meth:`LoopOptimizer.step`); any other
    ``torch.optim`` optimizer gets the closure's gradient in ``p.grad`` and its own
    ``step()``, skipped on a non-finite loss or gradient, as the first-order baselines
    step (:func:`~hpo2.optim.baselines.first_order_closure_step`)."""
    if isinstance(optimizer, LoopOptimizer):
        loss = optimizer.step(closure)
        return loss, dict(optimizer.diagnostics)
    return first_order_closure_step(optimizer, closure, optimizer.step)


def take_snapshot(optimizer: Optimizer, data: Callable[[], DataClosure], batch_size: int) -> float:
    """The epoch-start hook (:meth:`LoopOptimizer.snapshot`): ``data()`` builds the
    closure over the whole training set, only for an optimizer that
    :attr:`~LoopOptimizer.takes_snapshots`; returns the gradient-equivalents spent
    (0 for every other optimizer)."""
    if not (isinstance(optimizer, LoopOptimizer) and optimizer.takes_snapshots):
        return 0.0
    return float(optimizer.snapshot(data(), batch_size))
