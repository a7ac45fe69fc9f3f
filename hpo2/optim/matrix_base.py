r"""Shared machinery of the matrix preconditioners (Shampoo, SOAP): one gradient per
step through the closure, parameters viewed as matrices, blocks of large
dimensions, and honest cost accounting (inverse roots: :mod:`hpo2.optim.inverse_roots`).

Every parameter with two or more dimensions is preconditioned as the matrix
``(shape[0], prod(shape[1:]))`` (a conv kernel ``(out, in, kh, kw)`` becomes
``(out, in*kh*kw)``, as in Gupta et al. 2018, sec. 4); 1-d parameters (biases,
norm scales) go to the method's diagonal fallback.

Cost: a step takes one gradient; the preconditioner work (matrix products every
step, eigendecompositions every few steps) is measured in wall time and added to
``grad_equivalents`` as ``overhead_grad_equivalents`` = seconds of optimizer work /
mean seconds of a gradient so far (a running mean, so one preempted gradient on a
shared machine does not distort every step), so budgets in gradient-equivalents
stay honest: a refresh step is charged its eigendecompositions.  On CUDA the work is
timed to its end on the device (:func:`~hpo2.optim.costs.device_clock`), not to its
launch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from hpo2.optim.base import Closure, CurvatureOptimizer
from hpo2.optim.costs import device_clock
from hpo2.solvers import host_floats


def as_matrix(t: Tensor) -> Tensor:
    """View a parameter-shaped tensor with ``ndim >= 2`` as ``(shape[0], -1)``."""
    return t.reshape(t.shape[0], -1)


def block_slices(n_rows: int, n_cols: int, max_dim: int) -> list[tuple[slice, slice]]:
    """Split an ``n_rows x n_cols`` matrix into blocks whose sides are at most
    ``max_dim`` (Anil et al. 2020, sec. 3.2: large layers are preconditioned blockwise)."""

    def cuts(n: int) -> list[slice]:
        return [slice(start, min(start + max_dim, n)) for start in range(0, n, max_dim)]

    return [(r, c) for r in cuts(n_rows) for c in cuts(n_cols)]


def charge_overhead(optimizer: CurvatureOptimizer, grad_seconds: float, work_seconds: float) -> None:
    """Add ``work_seconds`` of preconditioner work to the finished step's
    ``grad_equivalents``, in units of the running mean of ``grad_seconds`` (the
    seconds of one gradient, measured each step; the mean lives in the optimizer
    state).  The seconds themselves are logged as ``work_seconds``."""
    state = optimizer.global_state
    n = int(state.get("timed_gradients", 0)) + 1
    mean = float(state.get("mean_grad_seconds", 0.0))
    mean += (grad_seconds - mean) / n
    state["timed_gradients"], state["mean_grad_seconds"] = n, mean
    overhead = work_seconds / max(mean, 1e-9)
    optimizer.diagnostics["overhead_grad_equivalents"] = overhead
    optimizer.diagnostics["work_seconds"] = work_seconds
    optimizer.diagnostics["grad_equivalents"] = float(optimizer.diagnostics["grad_equivalents"]) + overhead


class MatrixPreconditioner(CurvatureOptimizer):
    """Base of per-parameter methods driven by the gradient alone (param groups allowed).

    The closure may return the loss (hpo2 takes the gradient) or, torch-style, call
    ``backward()`` itself.  Subclasses implement :meth:`_update` for one parameter.
    """

    joint = False

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        self._start_diagnostics()
        started = time.perf_counter()
        loss_t, flat_grad = self._value_and_grad(closure, allow_backward=True)
        loss, g_norm = host_floats(loss_t, flat_grad.double().norm())  # also waits for the gradient: timed with it
        grad_seconds = time.perf_counter() - started
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics()
            return loss_t
        device = self._params[0].device
        started = device_clock(device)
        state = self.global_state
        state["global_step"] = int(state.get("global_step", 0)) + 1
        with torch.no_grad():
            for group, p in self._parameters():
                self._update(group, p, p.grad, self.state[p])  # type: ignore[arg-type]  # grads stored above
        self._summarise()
        self._finish_diagnostics()
        charge_overhead(self, grad_seconds, device_clock(device) - started)
        return loss_t

    def _parameters(self) -> Iterator[tuple[dict[str, Any], Tensor]]:
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p

    def _update(self, group: dict[str, Any], p: Tensor, grad: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _summarise(self) -> None:
        """Add the method's own diagnostics after all parameters were updated."""
