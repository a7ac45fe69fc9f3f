"""The closure protocol of hpo2's optimizers.

Like every ``torch.optim`` optimizer, ``step(closure)`` re-evaluates the model.
hpo2's curvature optimizers take the gradient themselves with
``torch.autograd.grad`` (``create_graph=True`` where they need Hessian products),
so **the closure returns the loss and does not call ``backward()``**: asking users
for ``loss.backward(create_graph=True)`` leaks memory through reference cycles.

A plain function ``closure() -> loss`` is enough for Hessian curvature.  Gauss-
Newton curvature, Gauss-Newton-Bartlett estimates and Hessian-free's separate
curvature minibatch also need the model's outputs and the loss function; a
:class:`BatchClosure` provides them::

    closure = BatchClosure(model, nn.CrossEntropyLoss(), x, y)
    optimizer.step(closure)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class BatchEvaluation:
    """Outputs, targets and loss of one forward pass (graph attached)."""

    outputs: Tensor
    targets: Tensor
    loss: Tensor


class BatchClosure:
    """A closure over one minibatch ``(inputs, targets)`` of ``model`` and ``loss_fn``.

    Calling it returns the loss on the whole batch (the standard closure);
    :meth:`evaluate` returns outputs and loss, on the whole batch or on its first
    ``fraction`` of samples (Hessian-free's curvature minibatch, Martens 2010 sec. 4.3).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor,
        targets: Tensor,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.batch_size = inputs.shape[0]

    def chunk_size(self, fraction: float) -> int:
        """``ceil(fraction * batch)`` samples, at least one."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        return max(1, math.ceil(fraction * self.batch_size))

    def n_chunks(self, fraction: float) -> int:
        """How many disjoint chunks of :meth:`chunk_size` fit in the batch."""
        return max(1, self.batch_size // self.chunk_size(fraction))

    def evaluate(self, fraction: float = 1.0, chunk: int = 0) -> BatchEvaluation:
        """Forward pass on chunk number ``chunk`` (``0 <= chunk <``
        :meth:`n_chunks`) of ``ceil(fraction * batch)`` consecutive samples; cycling
        ``chunk`` over the steps gives Martens' (2010, sec. 4.3) cycling curvature chunk."""
        n = self.chunk_size(fraction)
        if not 0 <= chunk < self.n_chunks(fraction):
            raise ValueError(f"chunk={chunk} must be in [0, {self.n_chunks(fraction)}) for fraction={fraction}")
        start = chunk * n
        whole = n == self.batch_size
        inputs = self.inputs if whole else self.inputs[start : start + n]
        targets = self.targets if whole else self.targets[start : start + n]
        outputs = self.model(inputs)
        return BatchEvaluation(outputs=outputs, targets=targets, loss=self.loss_fn(outputs, targets))

    def __call__(self) -> Tensor:
        return self.evaluate().loss

    def loss_value(self, fraction: float = 1.0, chunk: int = 0) -> Tensor:
        """The loss on a chunk, forward only (no graph; a 0-d tensor on the model's device)."""
        with torch.no_grad():
            return self.evaluate(fraction, chunk).loss.detach()

    def has_active_dropout(self) -> bool:
        """Whether dropout is on: it makes curvature products on one batch inconsistent."""
        return any(
            isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in self.model.modules()
        )


def require_batch_closure(closure: object, who: str, why: str) -> BatchClosure:
    """Return ``closure`` if it is a :class:`BatchClosure`, else a clear error."""
    if not isinstance(closure, BatchClosure):
        raise ValueError(
            f"{who} needs a hpo2.optim.BatchClosure(model, loss_fn, inputs, targets) as closure for {why}; "
            f"got {type(closure).__name__}"
        )
    if closure.has_active_dropout():
        warnings.warn(
            f"{who}: dropout is active in training mode, so curvature products on one batch are "
            "inconsistent; call model.eval() for the curvature or remove dropout",
            stacklevel=3,
        )
    return closure
