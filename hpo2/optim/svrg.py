r"""Stochastic variance-reduced gradient (Johnson & Zhang, "Accelerating
stochastic gradient descent using predictive variance reduction", NeurIPS 2013,
Procedure SVRG, option I).

Every ``snapshot_every`` epochs the snapshot :math:`\tilde w \leftarrow w` and its
full gradient :math:`\tilde\mu = \nabla F(\tilde w) = \frac1n\sum_i \nabla f_i(\tilde w)`
are taken (over the whole training set, or over a random ``snapshot_samples``
subset: the large-batch variant).  Each step on a minibatch :math:`B` then uses

.. math::
   v = \nabla f_B(w) - \nabla f_B(\tilde w) + \tilde\mu, \qquad
   b \leftarrow \beta b + v, \qquad w \leftarrow w - \eta\, b,

(:math:`\beta` = ``momentum``, 0 in the paper), an unbiased estimate of
:math:`\nabla F(w)` whose variance vanishes as :math:`w, \tilde w \to w^*`: with a
constant step SVRG converges linearly on strongly convex finite sums, where SGD
stalls at a noise floor.  Each step costs two gradients on the minibatch; the
snapshot costs ``snapshot_samples / batch`` gradient-equivalents.  Defazio &
Bottou ("On the ineffectiveness of variance reduced optimization for deep
learning", NeurIPS 2019) found it no help on deep networks; hpo2's benchmark
rows are where a user sees whether that holds on their task.  Dropout or batch
norm in training mode make :math:`\nabla f_B(w)` and :math:`\nabla f_B(\tilde w)`
see different masks or statistics, which spoils the correction.

**Snapshot protocol** (honoured by :func:`hpo2.train.run_training`): an optimizer
with a ``snapshot(data, batch_size)`` method gets it called at the start of every
epoch with a :class:`~hpo2.optim.closure.BatchClosure` over the whole training set
(a :class:`~hpo2.optim.closure.StreamingClosure` when the split is a ``Dataset``:
each snapshot chunk of ``chunk_size`` samples is then loaded on its own) and the
training minibatch size; it returns the gradient-equivalents it spent
(gradients over ``batch_size`` samples; its wall time is training time).
SVRG refreshes its snapshot on every ``snapshot_every``-th call.

**Variance reduction achieved** (diagnostics ``variance_plain``,
``variance_corrected``, ``variance_ratio``): when a snapshot is refreshed, the new
full gradient :math:`\mu = \nabla F(w)` at the current point is known, so on
``variance_probes`` random minibatches (of the training batch size)
:math:`\mathbb E\|\nabla f_B(w) - \mu\|^2` (plain SGD) and
:math:`\mathbb E\|\nabla f_B(w) - \nabla f_B(\tilde w_{old}) + \tilde\mu_{old} - \mu\|^2`
(SVRG with the snapshot it is about to replace) are measured; they cost
``2 * variance_probes`` minibatch gradients, counted.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import grads_or_zeros
from hpo2.optim.base import Closure, CurvatureOptimizer
from hpo2.optim.closure import DataClosure
from hpo2.optim.settings import FloatRange, IntRange, OptimizerSettings, document_settings
from hpo2.solvers import host_floats


class SVRGSettings(OptimizerSettings):
    """Settings of :class:`SVRG`; Johnson & Zhang refresh every 2 (convex) to 5
    (neural nets) epochs and use no momentum."""

    family: ClassVar[str] = "variance reduction"
    reference: ClassVar[str] = "Johnson & Zhang, NeurIPS 2013"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 1.0, log=True)] = 0.025
    """Learning rate eta."""
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.95)] = 0.0
    """Heavy-ball momentum beta on the variance-reduced gradient (0 in the paper)."""
    snapshot_every: Annotated[int, Field(ge=1), IntRange(1, 5)] = 2
    """Take a new snapshot and its full gradient every this many epochs."""
    snapshot_samples: Annotated[int | None, Field(ge=1)] = None
    """Samples of the snapshot gradient (None: the whole training set)."""
    chunk_size: Annotated[int, Field(ge=1)] = 4096
    """Samples per chunk when summing the snapshot gradient (bounds memory)."""
    variance_probes: Annotated[int, Field(ge=0)] = 4
    """Minibatches on which the achieved variance reduction is measured at a snapshot (0: off)."""
    seed: int = 0
    """Seed of the generator drawing the snapshot subset and the variance probes."""


@document_settings
class SVRG(CurvatureOptimizer):
    """SVRG as a ``torch.optim.Optimizer``: call ``snapshot(BatchClosure over the
    training set)`` before the first step (the training loop does), then
    ``step(closure)`` with a closure that returns the minibatch loss.

    Example:
        A snapshot per epoch (the training loop calls ``snapshot``), then minibatch steps:

        >>> import torch
        >>> from hpo2.optim import SVRG, BatchClosure
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> x = torch.randn(256, 3)
        >>> y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        >>> loss_fn = torch.nn.MSELoss()
        >>> opt = SVRG(model.parameters(), lr=0.1, snapshot_every=1)
        >>> for epoch in range(5):
        ...     _ = opt.snapshot(BatchClosure(model, loss_fn, x, y), batch_size=32)
        ...     for i in range(0, 256, 32):
        ...         _ = opt.step(BatchClosure(model, loss_fn, x[i : i + 32], y[i : i + 32]))
        >>> loss_fn(model(x), y).item() < 1e-3
        True
    """

    Settings = SVRGSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 0.025,
        momentum: float = 0.0,
        snapshot_every: int = 2,
        snapshot_samples: int | None = None,
        chunk_size: int = 4096,
        variance_probes: int = 4,
        seed: int = 0,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, momentum=momentum, snapshot_every=snapshot_every, snapshot_samples=snapshot_samples,
            chunk_size=chunk_size, variance_probes=variance_probes, seed=seed
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)
        self._generator = torch.Generator().manual_seed(self.settings.seed)  # type: ignore[attr-defined]  # SVRG.Settings declares seed
        self.snapshot_diagnostics: dict[str, float] = {}

    # -- gradients of the loss over a (large) batch, in chunks
    def _batch_gradient(self, data: DataClosure, index: Tensor) -> Tensor:
        total = torch.zeros_like(self._flat_params())
        chunk = int(self.param_groups[0]["chunk_size"])
        for start in range(0, len(index), chunk):
            part = index[start : start + chunk]
            closure = data.take(part)
            with torch.enable_grad():
                found = torch.autograd.grad(closure(), self._params, allow_unused=True)
            total += self._flatten(grads_or_zeros(found, self._params)) * (len(part) / len(index))
        return total

    def _gradient_at(self, flat: Tensor, closure: Closure) -> Tensor:
        current = self._flat_params()
        self._set_flat_params(flat)
        try:
            return self._value_and_grad(closure)[1]
        finally:
            self._set_flat_params(current)

    @property
    def takes_snapshots(self) -> bool:
        return True

    def snapshot(self, data: DataClosure, batch_size: int) -> float:
        """Called at each epoch start; every ``snapshot_every``-th call takes
        :math:`\\tilde w, \\tilde\\mu`.  Returns the gradient-equivalents spent."""
        st, group = self.global_state, self.param_groups[0]
        st["epochs_seen"] = int(st.get("epochs_seen", 0)) + 1
        if "snapshot" in st and (st["epochs_seen"] - 1) % group["snapshot_every"] != 0:
            return 0.0
        n = data.batch_size
        size = n if group["snapshot_samples"] is None else min(n, int(group["snapshot_samples"]))
        index = torch.randperm(n, generator=self._generator)[:size]
        batch = min(n, int(batch_size))
        w = self._flat_params()
        mu = self._batch_gradient(data, index)
        spent = size / batch
        if "snapshot" in st and group["variance_probes"] > 0:
            spent += self._measure_variance(data, w, mu, batch, group["variance_probes"])
        st["snapshot"], st["snapshot_gradient"] = w, mu
        st["snapshots_taken"] = int(st.get("snapshots_taken", 0)) + 1
        self.snapshot_diagnostics["snapshot_grad_equivalents"] = spent
        return spent

    def _measure_variance(self, data: DataClosure, w: Tensor, mu: Tensor, batch: int, probes: int) -> float:
        st = self.global_state
        plain = corrected = 0.0
        for _ in range(probes):
            closure = data.take(torch.randperm(data.batch_size, generator=self._generator)[:batch])
            g_w = self._value_and_grad(closure)[1]
            g_old = self._gradient_at(st["snapshot"], closure)
            plain += float((g_w - mu).pow(2).sum()) / probes
            corrected += float((g_w - g_old + st["snapshot_gradient"] - mu).pow(2).sum()) / probes
        self.snapshot_diagnostics.update(
            variance_plain=plain, variance_corrected=corrected, variance_ratio=corrected / max(plain, 1e-300)
        )
        return 2.0 * probes

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        st, group = self.global_state, self.param_groups[0]
        if "snapshot" not in st:
            raise ValueError(
                "SVRG needs optimizer.snapshot(BatchClosure(model, loss_fn, train_x, train_y)) before its first step; "
                "hpo2.train calls it at every epoch start"
            )
        self._start_diagnostics()
        loss_t, g_w = self._value_and_grad(closure)
        assert closure is not None, "the call above raises on a missing closure"
        loss, g_norm = host_floats(loss_t, g_w.norm())
        if not self._check_finite(loss, g_norm):
            self.diagnostics["loss"] = loss
            self._finish_diagnostics()
            return loss_t
        g_snap = self._gradient_at(st["snapshot"], closure)
        direction = g_w - g_snap + st["snapshot_gradient"]
        if group["momentum"] > 0:
            buf = st.get("momentum_buffer")
            st["momentum_buffer"] = direction if buf is None else buf.mul_(group["momentum"]).add_(direction)
            direction = st["momentum_buffer"]
        self._set_flat_params(self._flat_params() - group["lr"] * direction)
        self.diagnostics.update(loss=loss, grad_norm=g_norm, corrected_grad_norm=float(direction.norm()),
                                snapshots_taken=int(st["snapshots_taken"]), **self.snapshot_diagnostics)  # fmt: skip
        self._finish_diagnostics()
        return loss_t
