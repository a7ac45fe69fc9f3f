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

**A batch larger than memory.**  A :class:`StreamingClosure` holds a gradient batch
as a stream of loader batches (:class:`BatchStream`, e.g. a ``DataLoader`` over the
batch's samples): the loss and gradient are accumulated over them, a pass at a time,
so memory is bounded by one loader batch whatever the batch's size; curvature
products use a fixed chunk of at most one loader batch.  The loss must be a mean over
the samples (``reduction="mean"``): loader batch :math:`k` of :math:`b_k` samples
weighs :math:`b_k / B`.  Only optimizers that declare ``streams = True``
(:class:`~hpo2.optim.HessianFree`, :class:`~hpo2.optim.NewtonCG`) take one; every
other refuses it with a clear error, since a streamed batch has no single loss graph.

**The models people have.**  The model's output is passed to the loss as it is, so a
model that returns a tuple or a dict works with a loss that takes it; only
Gauss-Newton products, Gauss-Newton-Bartlett estimates and K-FAC need the output as
one tensor (:meth:`BatchEvaluation.output_tensor` says so clearly).  BatchNorm:
see :mod:`hpo2.curvature.batch_norm` -- curvature sees the batch's statistics, and a
closure's first forward pass is the only one that moves the running statistics.
Dropout stays as the model's mode says: in train mode each forward pass draws new
masks, so the gradient, the curvature products and the loss evaluations of one
step each see different ones (a warning says so; ``model.eval()`` turns it off).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from hpo2.curvature import grads_or_zeros
from hpo2.curvature.batch_norm import running_statistics_kept

Indices = Tensor | Sequence[int]


@dataclass
class BatchEvaluation:
    """Outputs, targets and loss of one forward pass (graph attached).  ``outputs`` is
    whatever the model returns (a tensor, or a tuple/dict that the loss takes)."""

    outputs: Any
    targets: Tensor
    loss: Tensor

    def output_tensor(self, who: str, why: str) -> Tensor:
        """The outputs as one tensor, or a clear error naming what needs it."""
        if isinstance(self.outputs, Tensor):
            return self.outputs
        raise ValueError(
            f"{who} needs the model's output as one tensor for {why}; the model returned a "
            f"{type(self.outputs).__name__}: wrap the model so that it returns the tensor the loss takes, "
            "or use an optimizer or curvature that needs only the loss (e.g. curvature='hessian')"
        )


def _active_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in model.modules())


class BatchClosure:
    """A closure over one minibatch ``(inputs, targets)`` of ``model`` and ``loss_fn``.

    Calling it returns the loss on the whole batch (the standard closure);
    :meth:`evaluate` returns outputs and loss, on the whole batch or on its first
    ``fraction`` of samples (Hessian-free's curvature minibatch, Martens 2010 sec. 4.3).

    Only the closure's first forward pass may move BatchNorm's running statistics
    (the step's gradient, as one SGD step would); later ones keep them
    (:mod:`hpo2.curvature.batch_norm`), and so does every pass when
    ``updates_statistics`` is False.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Tensor], Tensor],
        inputs: Tensor,
        targets: Tensor,
        *,
        updates_statistics: bool = True,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.batch_size = inputs.shape[0]
        self._forwards = 0 if updates_statistics else 1

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
        self._forwards += 1
        with nullcontext() if self._forwards == 1 else running_statistics_kept(self.model):
            outputs = self.model(inputs)
        return BatchEvaluation(outputs=outputs, targets=targets, loss=self.loss_fn(outputs, targets))

    def __call__(self) -> Tensor:
        return self.evaluate().loss

    def loss_value(self, fraction: float = 1.0, chunk: int = 0) -> Tensor:
        """The loss on a chunk, forward only (no graph; a 0-d tensor on the model's device)."""
        with torch.no_grad():
            return self.evaluate(fraction, chunk).loss.detach()

    def take(self, index: Indices) -> BatchClosure:
        """The samples at ``index`` (positions in this batch) as their own closure, which
        leaves the running statistics alone (SVRG's snapshot chunks and probes)."""
        where = torch.as_tensor(index, device=self.inputs.device)
        return BatchClosure(self.model, self.loss_fn, self.inputs[where], self.targets[where], updates_statistics=False)

    def has_active_dropout(self) -> bool:
        """Whether dropout is on: it makes curvature products on one batch inconsistent."""
        return _active_dropout(self.model)


class BatchStream(Protocol):
    """A gradient batch of ``len(stream)`` samples, read in loader batches of at most
    ``piece_size`` samples (:class:`hpo2.tasks.loading.IndexWindow` reads one from a
    ``Dataset`` through a ``DataLoader``).  Every pass yields the same samples in the
    same order, already on the model's device."""

    piece_size: int

    def __len__(self) -> int: ...

    def pieces(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the batch: ``(inputs, targets)`` of each loader batch."""
        ...

    def take(self, positions: Indices) -> tuple[Tensor, Tensor]:
        """The samples at ``positions`` of the batch, collated into one batch."""
        ...


class StreamingClosure:
    r"""A closure over a gradient batch read as a stream of loader batches (module docstring).

    :meth:`value_and_grad` accumulates the loss and gradient over one pass,
    :math:`\nabla L = \sum_k (b_k / B) \nabla L_k`; :meth:`loss_value` on the whole
    batch is a forward-only pass; :meth:`evaluate` gives chunk number ``chunk`` of
    :meth:`chunk_size` consecutive samples -- at most one loader batch, whatever
    ``fraction`` asks -- loaded once and kept while the same chunk is asked for.
    Calling the closure for a single loss graph raises: there is none.

    Args:
        model: the network (its mode as the caller left it).
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the samples.
        stream: the batch (:class:`BatchStream`).

    Example:
        The streamed gradient is the whole batch's:

        >>> import torch
        >>> from torch import nn
        >>> from hpo2.optim import BatchClosure, StreamingClosure
        >>> class Pieces:
        ...     piece_size = 4
        ...     def __init__(self, x, y): self.x, self.y = x, y
        ...     def __len__(self): return len(self.x)
        ...     def pieces(self): return ((self.x[i : i + 4], self.y[i : i + 4]) for i in range(0, len(self.x), 4))
        ...     def take(self, positions): return self.x[positions], self.y[positions]
        >>> _ = torch.manual_seed(0)
        >>> model, x, y = nn.Linear(3, 1).double(), torch.randn(10, 3).double(), torch.randn(10, 1).double()
        >>> params = list(model.parameters())
        >>> _, streamed = StreamingClosure(model, nn.MSELoss(), Pieces(x, y)).value_and_grad(params)
        >>> whole = torch.autograd.grad(BatchClosure(model, nn.MSELoss(), x, y)(), params)
        >>> all(torch.allclose(a, b) for a, b in zip(streamed, whole))
        True
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Tensor], Tensor], stream: BatchStream) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.stream = stream
        self.batch_size = len(stream)
        self._passes = 0
        self._chunk: tuple[int, int, BatchClosure] | None = None  # (start, size, its data)

    def chunk_size(self, fraction: float) -> int:
        """``ceil(fraction * batch)`` samples, at least one and at most one loader batch."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction={fraction} must be in (0, 1]")
        return max(1, min(math.ceil(fraction * self.batch_size), self.stream.piece_size))

    def n_chunks(self, fraction: float) -> int:
        """How many disjoint chunks of :meth:`chunk_size` fit in the batch."""
        return max(1, self.batch_size // self.chunk_size(fraction))

    def pieces(self) -> Iterator[tuple[BatchClosure, float]]:
        """One pass: each loader batch as a :class:`BatchClosure` with its weight
        :math:`b_k / B`.  Only the closure's first pass moves BatchNorm's running statistics."""
        first = self._passes == 0
        self._passes += 1
        for inputs, targets in self.stream.pieces():
            piece = BatchClosure(self.model, self.loss_fn, inputs, targets, updates_statistics=first)
            yield piece, piece.batch_size / self.batch_size

    def value_and_grad(self, params: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Loss (detached) and gradient on the whole batch, accumulated over one pass."""
        total: list[Tensor] | None = None  # [loss, *gradient]
        for piece, weight in self.pieces():
            with torch.enable_grad():
                piece_loss = piece()
                found = grads_or_zeros(torch.autograd.grad(piece_loss, params, allow_unused=True), params)
            total = add_weighted(total, [piece_loss.detach(), *found], weight)
        if total is None:
            raise ValueError("StreamingClosure: the stream yielded no samples")
        return total[0], total[1:]

    def evaluate(self, fraction: float = 1.0, chunk: int = 0) -> BatchEvaluation:
        """Forward pass on chunk ``chunk`` of :meth:`chunk_size` consecutive samples
        (the whole batch only when it fits in one loader batch: else it has no single graph)."""
        if fraction >= 1.0 and self.chunk_size(fraction) < self.batch_size:
            raise ValueError(
                "StreamingClosure.evaluate: the whole streamed batch has no single graph; ask for a chunk "
                "(fraction < 1) or use value_and_grad / loss_value"
            )
        n = self.chunk_size(fraction)
        if not 0 <= chunk < self.n_chunks(fraction):
            raise ValueError(f"chunk={chunk} must be in [0, {self.n_chunks(fraction)}) for fraction={fraction}")
        start = chunk * n
        if self._chunk is None or self._chunk[:2] != (start, n):
            self._chunk = (start, n, self.take(range(start, start + n)))
        return self._chunk[2].evaluate()

    def loss_value(self, fraction: float = 1.0, chunk: int = 0) -> Tensor:
        """The loss, forward only: on the whole batch (one pass) for ``fraction == 1``,
        else on the chunk (a 0-d tensor on the model's device)."""
        with torch.no_grad():
            if fraction < 1.0:
                return self.evaluate(fraction, chunk).loss.detach()
            total: list[Tensor] | None = None
            for piece, weight in self.pieces():
                total = add_weighted(total, [piece().detach()], weight)
        if total is None:
            raise ValueError("StreamingClosure: the stream yielded no samples")
        return total[0]

    def take(self, index: Indices) -> BatchClosure:
        """The samples at ``index`` (positions in the batch) as a :class:`BatchClosure`
        that leaves the running statistics alone."""
        inputs, targets = self.stream.take(index)
        return BatchClosure(self.model, self.loss_fn, inputs, targets, updates_statistics=False)

    def __call__(self) -> Tensor:
        raise ValueError(
            "a StreamingClosure has no single loss graph (its batch is streamed in loader batches): "
            "only optimizers that accumulate the gradient take it (hpo2's HessianFree and NewtonCG); "
            "use a gradient batch no larger than one loader batch for the others"
        )

    def has_active_dropout(self) -> bool:
        """Whether dropout is on: it makes curvature products on one batch inconsistent."""
        return _active_dropout(self.model)


DataClosure = BatchClosure | StreamingClosure


def add_weighted(total: list[Tensor] | None, parts: Sequence[Tensor], weight: float) -> list[Tensor]:
    """``total + weight * parts`` elementwise, in place (a new list when ``total`` is None):
    one loader batch's share of a streamed batch's sums."""
    if total is None:
        return [part * weight for part in parts]
    for accumulated, part in zip(total, parts):
        accumulated.add_(part, alpha=weight)
    return total


def require_data_closure(closure: object, who: str, why: str) -> DataClosure:
    """Return ``closure`` if it is a :class:`BatchClosure` or a :class:`StreamingClosure`,
    else a clear error; warn when dropout is active."""
    return _checked(closure, who, why)


def require_batch_closure(closure: object, who: str, why: str) -> BatchClosure:
    """Return ``closure`` if it is a :class:`BatchClosure` (the whole batch in memory),
    else a clear error; warn when dropout is active."""
    if isinstance(closure, StreamingClosure):
        raise ValueError(
            f"{who} needs the whole batch in memory for {why}, but got a StreamingClosure (a batch streamed "
            "from a Dataset): use a gradient batch no larger than one loader batch"
        )
    checked = _checked(closure, who, why)
    assert isinstance(checked, BatchClosure), "a StreamingClosure is refused above"
    return checked


def _checked(closure: object, who: str, why: str) -> DataClosure:
    if not isinstance(closure, BatchClosure | StreamingClosure):
        raise ValueError(
            f"{who} needs a hpo2.optim.BatchClosure(model, loss_fn, inputs, targets) as closure for {why}; "
            f"got {type(closure).__name__}"
        )
    if closure.has_active_dropout():
        warnings.warn(
            f"{who}: dropout is active in training mode, so curvature products on one batch are "
            "inconsistent; call model.eval() for the curvature or remove dropout",
            stacklevel=4,
        )
    return closure
