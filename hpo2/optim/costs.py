r"""What an optimizer's work costs, in gradients of its batch, at prices measured on
the trial's own model and device.

The unit of cost is one gradient on the step's batch (:mod:`hpo2.optim.base`).  A
second-order step does other work too -- a curvature product, building the
operator (a backward pass that keeps its graph), a forward-only loss -- and its
nominal price (a product costs a gradient, a forward pass a third, work on a
fraction of the batch that fraction) can be far off:

* a Hessian-vector product by double backward costs 1.5-1.9 gradients;
* on a small network a product on Hessian-free's 1/10 curvature chunk costs a third
  of a gradient, not a tenth, once CG's vector work is counted: its time is mostly
  fixed (autograd's graph walk, kernel launches), so the sample count matters little.

So each optimizer prices the operations it does at their first use, with a
:class:`CostMeter`: the operation and a gradient on a batch of the same size are
timed in turn, ``repeats`` times each, and the price is the ratio of their median
times (the step that first did the operation was its warm-up).  The price is kept
for the optimizer's life and logged as ``price_<operation>`` in that step's
diagnostics, with the seconds the calibration took (``calibration_seconds``): a
measurement, not the optimizer's work, so it is not counted in the step's
gradient-equivalents (its seconds stay in the step's wall time).  On CUDA each timed
call is bracketed by :func:`synchronize`, so queued kernels are not billed as launch
time.

The operations priced, each in gradients on the step's batch (a gradient costs 1):

* ``product``: a curvature product as the step's solver takes it (CG's or Lanczos'
  vector work included), timed on the first :data:`SOLVER_ITERATIONS` iterations
  of the very solve the step runs (a product's time depends on its vectors: in
  float32 a converging solve can reach subnormal numbers, which the CPU handles
  slowly);
* ``curvature_setup``: building a curvature operator on the chunk (its forward
  pass and the backward pass that keeps its graph), or on the whole batch's
  retained graph;
* ``hessian_gradient``: the gradient by a backward pass that keeps its graph for
  Hessian products;
* ``batch_loss`` and ``chunk_loss``: a forward-only loss on the batch or the
  curvature chunk, read on the host (line searches, CG backtracking, the
  reduction ratio);
* ``gradient_and_squares``: Hessian-free's gradient with its preconditioner's
  squared per-sample gradients (the per-sample fallback for layers outside
  ``nn.Linear`` / ``nn.Conv2d`` included);
* ``gnb_probe``: one Gauss-Newton-Bartlett probe (a backward pass through the
  outputs' graph).

The matrix methods (Shampoo, SOAP, K-FAC) time their preconditioner work every step
instead (:func:`hpo2.optim.matrix_base.charge_overhead`), with :func:`device_clock`.

Calibration changes the counts, never the arithmetic: it runs under
``torch.random.fork_rng`` (dropout masks and every other draw are those of an
uncalibrated run), uses its own generators for probes, leaves the work counters and
product counts as they were, and only runs forward passes that keep BatchNorm's
running statistics (every pass of a :class:`~hpo2.optim.closure.BatchClosure` after
its first; a plain closure's passes are the closure's own).  ``CostMeter(calibrate=False)``
keeps the nominal prices (counts that do not depend on the machine), and
``CostMeter(prices={...})`` fixes prices by name.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

SOLVER_ITERATIONS = 5
"""Iterations of the step's own solver (CG, Lanczos) a product's price is timed over:
its vector work is part of what a product costs."""

Timer = Callable[[], float]
Operation = Callable[[], object]
"""One run of the priced work; returns how many operations it did as an ``int``
(anything else: one)."""


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only: elsewhere work is done when the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device`` has done its queued work: read at both
    ends of a timed block of device work, it times the work, not its launch."""
    synchronize(device)
    return time.perf_counter()


@dataclass(frozen=True)
class Calibration:
    """One measurement: the ``ratio`` of an operation's seconds to a gradient's (each
    the median of its runs), and the ``seconds`` the measurement took."""

    ratio: float
    seconds: float


class CostMeter:
    """Measured prices of an optimizer's operations, in gradients of its batch.

    Args:
        calibrate: measure prices at first use; False keeps every nominal price.
        repeats: timed runs of the operation and of a gradient per price (their medians count).
        timer: the clock (seconds); injectable so that a test can control it.
        prices: prices fixed by name (never measured).

    Example:
        With a clock that only the timed work moves, a gradient of 2 s and an
        operation of 0.5 s price the operation at a quarter of a gradient:

        >>> import torch
        >>> from hpo2.optim.costs import CostMeter
        >>> now = [0.0]
        >>> def wait(seconds):
        ...     now[0] += seconds
        >>> meter = CostMeter(timer=lambda: now[0])
        >>> calibration = meter.measure(lambda: wait(0.5), lambda: wait(2.0), torch.device("cpu"))
        >>> calibration.ratio, calibration.seconds
        (0.25, 12.5)
    """

    def __init__(
        self,
        *,
        calibrate: bool = True,
        repeats: int = 5,
        timer: Timer = time.perf_counter,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeats={repeats} must be >= 1")
        self.calibrate, self.repeats, self.timer = calibrate, repeats, timer
        self.prices: dict[str, float] = dict(prices or {})

    def measure(self, operation: Operation, unit: Callable[[], object], device: torch.device) -> Calibration:
        """Time ``unit`` (a gradient) and ``operation`` in turn, ``repeats`` times each:
        the ratio of the operation's median time per operation done to the
        gradient's median.  Taken in turn, both see the same spells of load; the
        median keeps a run that a busy machine stalled from setting the price, and
        keeps what an operation typically costs (a large gradient's time varies run
        to run, with its memory, far more than a forward pass's)."""
        started = self.timer()
        gradients, operations = [], []
        for _ in range(self.repeats):
            gradients.append(self._seconds(unit, device)[0])
            seconds, done = self._seconds(operation, device)
            operations.append(seconds / (done if isinstance(done, int) and done > 0 else 1))
        ratio = statistics.median(operations) / max(statistics.median(gradients), 1e-12)
        return Calibration(ratio, self.timer() - started)

    def _seconds(self, fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
        synchronize(device)
        start = self.timer()
        result = fn()
        synchronize(device)
        return self.timer() - start, result
