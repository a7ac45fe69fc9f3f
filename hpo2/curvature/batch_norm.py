r"""What curvature sees of a model with BatchNorm, and the two helpers that make it so.

**Decision: curvature products see the batch's statistics** (train mode), the same
function whose gradient the step takes.  In train mode a BatchNorm layer normalises
with the mean and variance of the batch it is given, so the loss on a batch is
:math:`f(\theta) = L(z(\theta; \mu_B(\theta), \sigma_B(\theta)))`; the gradient, the
Gauss-Newton product :math:`J^\top H_L J v` and the Hessian product are all taken of
that :math:`f`, with :math:`J` including the dependence through :math:`\mu_B,
\sigma_B` (plain autograd handles it).  The quadratic model CG minimises then
describes the function whose reduction ratio is measured, which the running
statistics (eval mode) would not: they are a different function, one that lags
the weights.  A curvature chunk (Hessian-free's sub-batch) normalises with its own
statistics, as any sub-sampled curvature does; so does each loader batch of a
batch streamed from a ``Dataset`` (:class:`hpo2.optim.StreamingClosure`), whose
accumulated gradient is then the mean of the task-batch gradients, as SGD sees
them, not the gradient under the whole batch's statistics.  Validation runs in eval
mode (running statistics), as everywhere in PyTorch.

**Running statistics move once per step.**  A second-order step runs the model
many times on its batch (the gradient, the curvature chunk, CG backtracking, line
searches); in train mode every forward pass would move the running statistics, and
from parameters the step then rejects.  :func:`running_statistics_kept` restores
them, so only the step's first pass (its gradient; once per loader batch when the
batch is streamed) updates them, exactly as one SGD step would
(:class:`hpo2.optim.BatchClosure` applies it).

**Per-sample gradients** (``torch.func.vmap``: Hessian-free's preconditioner for
parameters outside ``nn.Linear`` / ``nn.Conv2d``) are not defined for train-mode
BatchNorm, which couples the samples of a batch (and ``vmap`` refuses its in-place
buffer update); :func:`batch_norm_in_eval` runs them with the running statistics.
A preconditioner only scales CG's iterates: it changes how fast CG converges, never
the system it solves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _NormBase


def tracking_norm_layers(model: nn.Module) -> list[_NormBase]:
    """The BatchNorm / InstanceNorm layers of ``model`` that would update running
    statistics on a forward pass (train mode, ``track_running_stats``)."""
    return [m for m in model.modules() if isinstance(m, _NormBase) and m.training and m.track_running_stats]


@contextmanager
def running_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Run the block in train mode (batch statistics) and leave every running mean,
    variance and batch count as it was on entry.

    The block updates copies, and the original buffers are put back on exit: never
    written in place, since a graph built before may have saved them for its backward."""
    layers = tracking_norm_layers(model)
    saved = [dict(m.named_buffers(recurse=False)) for m in layers]
    for layer, buffers in zip(layers, saved):
        for name, value in buffers.items():
            setattr(layer, name, value.clone())
    try:
        yield
    finally:
        for layer, buffers in zip(layers, saved):
            for name, value in buffers.items():
                setattr(layer, name, value)


@contextmanager
def batch_norm_in_eval(model: nn.Module) -> Iterator[None]:
    """Run the block with every train-mode BatchNorm layer in eval mode (running
    statistics, no update); their modes are restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for layer in layers:
        layer.eval()
    try:
        yield
    finally:
        for layer in layers:
            layer.train()
