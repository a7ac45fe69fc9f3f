r"""Hessian-free optimisation (Martens 2010; Martens & Sutskever 2012).

Each step minimises the damped Gauss-Newton model

.. math::  q(p) = g^\top p + \tfrac12 p^\top (G_c + \lambda I) p

by preconditioned CG, with the details that make HF work:

* **Data regime** (sec. 4.3): the gradient :math:`g` on a large batch
  (``batch_size``, default the whole training set, honoured by the training loop)
  and the Gauss-Newton curvature :math:`G_c = J^\top H_L J` (PSD; sec. 4.2) on a
  chunk of ``curvature_fraction`` of it (default 1/10) that cycles through the
  batch from step to step.
* **Warm start** :math:`p_0 = \text{cg\_decay} \cdot x_{\text{prev}}` from the
  *final* CG iterate of the previous step (sec. 4.5, decay 0.95 per Martens &
  Sutskever 2012 sec. 8.7), not the backtracked one; reset to zero after a
  rejected step.
* **Martens' stopping rule** (sec. 4.4) with :math:`\epsilon = 5\cdot10^{-4}`,
  CG capped at ``cg_max_iter``.
* **Preconditioner** :math:`M = (\mathrm{diag}(\sum_n w_n \nabla\ell_n^{\odot 2}) + \lambda)^{0.75}`
  (sec. 4.7) with :math:`L = \sum_n w_n \ell_n` (:math:`w_n = 1/N` for a mean),
  from the gradient's own backward pass (:class:`~hpo2.curvature.LayerStatistics`);
  parameters outside ``nn.Linear`` / ``nn.Conv2d`` fall back to ``torch.func``
  per-sample gradients (one warning names them).
* **CG backtracking** (sec. 4.6): of the iterates stored at
  :math:`\lceil 1.3^j \rceil`, walk back from the last while the loss on the
  evaluation batch keeps falling.
* **Levenberg-Marquardt damping** (sec. 4.1): with the reduction ratio
  :math:`\rho = (f(\theta + p) - f(\theta)) / q_0(p)` on the evaluation batch, with
  the *undamped* model :math:`q_0(p) = q(p) - \tfrac\lambda2 \lVert p\rVert^2`
  (read off CG's residual, at no extra product), multiply :math:`\lambda` by
  ``lm_boost`` (3/2) when :math:`\rho < 1/4` and by ``lm_drop`` (2/3) when
  :math:`\rho > 3/4`.
* ``evaluation_batch``: ``"curvature"`` (Martens' code: backtracking and
  :math:`\rho` on the curvature chunk, forward passes on 1/10 of the batch) or
  ``"gradient"`` (on the whole gradient batch: less noisy, more expensive).
* **Final line search** (Martens & Sutskever 2012, sec. 8.8): Armijo backtracking
  on the gradient batch from ``lr`` with :math:`c = 10^{-2}`, shrinking by 0.8;
  every step taken has been evaluated; no acceptable step rejects the update.

**Cost** (``grad_equivalents``): the gradient with the preconditioner's squares, the
chunk's operator, each CG product and each loss on the chunk or the batch, at the
prices measured on the optimizer's first steps (:mod:`hpo2.optim.costs`).  On a
small network a product on a 1/10 chunk costs far more than 1/10 of a gradient:
its time is mostly fixed (graph walk, kernel launches, CG's vector work).

**A streamed batch** (:class:`~hpo2.optim.closure.StreamingClosure`, a ``Dataset``
split in the large-batch regime): the gradient and the preconditioner's squares
are accumulated over the loader batches, each loss on the gradient batch is one
pass, and the curvature chunk holds at most one loader batch (``curvature_samples``
in the diagnostics says how many; ``n_hvp`` counts the products as that fraction).

Dropout makes the curvature products on one batch inconsistent: a warning is
raised when it is active (call ``model.eval()`` or remove it).  BatchNorm: the
products see the batch's statistics (:mod:`hpo2.curvature.batch_norm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, ClassVar, Literal, Self

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import DampedOperator, GGNOperator, LayerStatistics, grads_or_zeros, output_hessian_for
from hpo2.curvature.layers import per_sample_grad_squares, per_sample_scale
from hpo2.optim.base import Closure, CurvatureOptimizer, ParameterRay
from hpo2.optim.closure import (
    BatchClosure,
    BatchEvaluation,
    DataClosure,
    StreamingClosure,
    add_weighted,
    require_data_closure,
)
from hpo2.optim.costs import SOLVER_ITERATIONS
from hpo2.optim.settings import (
    BATCH_CHOICES,
    BatchSize,
    Choice,
    DataRegimeSettings,
    FloatRange,
    IntRange,
    document_settings,
)
from hpo2.solvers import Armijo, CGResult, cg, host_floats, levenberg_marquardt


class HessianFreeSettings(DataRegimeSettings):
    """Settings of :class:`HessianFree`; defaults from Martens (2010) and
    Martens & Sutskever (2012)."""

    family: ClassVar[str] = "Newton (CG)"
    reference: ClassVar[str] = "Martens, ICML 2010; Martens & Sutskever, Neural Networks: Tricks of the Trade (2012)"

    batch_size: Annotated[BatchSize, BATCH_CHOICES] = "full"
    """Gradient batch: 'full' (Martens 2010 sec. 4.3) the whole training set, None the task's, or an int."""
    lr: Annotated[float, Field(gt=0)] = 1.0
    """First trial step of the final Armijo line search (Martens & Sutskever 2012 sec. 8.8)."""
    damping: Annotated[float, Field(ge=0), FloatRange(1e-4, 100.0, log=True)] = 1.0
    """Initial Levenberg-Marquardt damping lambda of the model G + lambda I (Martens 2010 sec. 4.1)."""
    lm_boost: Annotated[float, Field(gt=1)] = 1.5
    """Factor on the damping when the reduction ratio is below 1/4 (Martens: 3/2)."""
    lm_drop: Annotated[float, Field(gt=0, lt=1)] = 2.0 / 3.0
    """Factor on the damping when the reduction ratio is above 3/4 (Martens: 2/3)."""
    cg_max_iter: Annotated[int, Field(ge=1), IntRange(10, 250, log=True)] = 250
    """Most CG iterations (Gauss-Newton products) per step (Martens 2010: 250)."""
    cg_decay: Annotated[float, Field(ge=0, le=1), FloatRange(0.5, 0.99)] = 0.95
    """Warm start: CG starts from this times the previous step's final CG iterate (sec. 4.5)."""
    martens_eps: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-2, log=True)] = 5e-4
    """Martens' CG stopping rule: relative progress of the quadratic model below this (sec. 4.4)."""
    curvature_fraction: Annotated[float, Field(gt=0, le=1), FloatRange(0.02, 1.0, log=True)] = 0.1
    """Fraction of the gradient batch the curvature chunk holds; chunks cycle over steps."""
    evaluation_batch: Annotated[Literal["curvature", "gradient"], Choice(("curvature", "gradient"))] = "curvature"
    """Batch for CG backtracking and the reduction ratio: the 'curvature' chunk or the 'gradient' batch."""
    preconditioner: bool = True
    """Precondition CG with the empirical-Fisher diagonal (Martens 2010 sec. 4.7)."""
    preconditioner_exponent: Annotated[float, Field(ge=0, le=1)] = 0.75
    """Exponent of the preconditioner (diag(sum grad^2) + lambda)^exponent (Martens: 0.75)."""
    backtracking: bool = True
    """Walk back through the stored CG iterates while the loss falls (sec. 4.6)."""
    ls_c1: Annotated[float, Field(gt=0, lt=1)] = 1e-2
    """Armijo sufficient-decrease constant of the final line search."""
    ls_shrink: Annotated[float, Field(gt=0, lt=1)] = 0.8
    """Factor on the step when the final line search backtracks."""
    max_ls_evals: Annotated[int, Field(ge=1)] = 60
    """Most loss evaluations in the final line search."""

    @model_validator(mode="after")
    def _damped_preconditioner(self) -> Self:
        """(diag + lambda)^alpha with lambda = 0 is 0 wherever a gradient square is (a dead unit)."""
        if self.damping == 0 and self.preconditioner:
            raise ValueError("damping = 0 with preconditioner: true divides by zero wherever a gradient square is "
                             "zero; give damping > 0, or preconditioner: false for undamped Newton steps")
        return self


@document_settings
class HessianFree(CurvatureOptimizer):
    """Martens' Hessian-free optimizer as a ``torch.optim.Optimizer``.

    ``step`` takes a :class:`~hpo2.optim.closure.BatchClosure` (the Gauss-Newton
    product needs the outputs and the loss function).

    Example:
        Three steps nearly solve a least-squares regression:

        >>> import torch
        >>> from hpo2.optim import BatchClosure, HessianFree
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> x = torch.randn(64, 3)
        >>> y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        >>> closure = BatchClosure(model, torch.nn.MSELoss(), x, y)
        >>> opt = HessianFree(model.parameters(), damping=1e-3, curvature_fraction=1.0)
        >>> losses = [float(opt.step(closure)) for _ in range(3)]
        >>> losses[-1] < 1e-3 * losses[0]
        True
    """

    Settings = HessianFreeSettings
    streams = True

    def __init__(
        self,
        params: ParamsT,
        *,
        batch_size: BatchSize = "full",
        lr: float = 1.0,
        damping: float = 1.0,
        lm_boost: float = 1.5,
        lm_drop: float = 2.0 / 3.0,
        cg_max_iter: int = 250,
        cg_decay: float = 0.95,
        martens_eps: float = 5e-4,
        curvature_fraction: float = 0.1,
        evaluation_batch: Literal["curvature", "gradient"] = "curvature",
        preconditioner: bool = True,
        preconditioner_exponent: float = 0.75,
        backtracking: bool = True,
        ls_c1: float = 1e-2,
        ls_shrink: float = 0.8,
        max_ls_evals: int = 60,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            batch_size=batch_size, lr=lr, damping=damping, lm_boost=lm_boost, lm_drop=lm_drop, cg_max_iter=cg_max_iter,
            cg_decay=cg_decay, martens_eps=martens_eps, curvature_fraction=curvature_fraction,
            evaluation_batch=evaluation_batch, preconditioner=preconditioner,
            preconditioner_exponent=preconditioner_exponent, backtracking=backtracking, ls_c1=ls_c1,
            ls_shrink=ls_shrink, max_ls_evals=max_ls_evals
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)
        self._statistics: LayerStatistics | None = None  # built on the first step (warns once)
        self._fallback_share = 0.0  # share of the step's batch the per-sample fallback ran on

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        group = self.param_groups[0]
        state = self.global_state
        batch = require_data_closure(closure, "HessianFree", "Gauss-Newton curvature")
        damping = float(state.get("damping", group["damping"]))
        fraction = batch.chunk_size(group["curvature_fraction"]) / batch.batch_size
        chunk = int(state.get("chunk", 0)) % batch.n_chunks(fraction)
        state["chunk"] = chunk + 1
        self._start_diagnostics(damping=damping, curvature_samples=round(fraction * batch.batch_size))

        loss_t, grads, squares, full = self._gradient_and_squares(batch, group["preconditioner"], fraction == 1.0)
        g = self._flatten(grads)
        loss, g_norm = host_floats(loss_t, g.norm())
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics()
            return loss_t
        operator = self._chunk_operator(batch, full, fraction, chunk)
        del full  # the chunk's graph is all the products need
        result, product_price = self._solve(batch, operator, g, squares, damping)

        x0 = self._flat_params()
        whole = group["evaluation_batch"] == "gradient" or fraction == 1.0
        eval_fraction, eval_chunk = (1.0, 0) if whole else (fraction, chunk)

        def eval_loss_at(p: Tensor) -> Tensor:
            self._set_flat_params(x0 + p)
            self._count("n_loss", eval_fraction, self._loss_price(batch, eval_fraction, eval_chunk))
            return batch.loss_value(eval_fraction, eval_chunk)

        old_eval_loss = loss if whole else self._chunk_loss(batch, fraction, chunk)
        step_p, quad, new_eval_loss = self._choose_iterate(result, eval_loss_at)
        slope, step_sq = host_floats(torch.dot(g, step_p), torch.dot(step_p, step_p))
        undamped = quad - 0.5 * damping * step_sq
        rho = (new_eval_loss - old_eval_loss) / undamped if undamped < 0 and math.isfinite(new_eval_loss) else -math.inf
        state["damping"] = damping_next = levenberg_marquardt(damping, rho, group["lm_boost"], group["lm_drop"])

        t, n_ls = self._final_line_search(batch, x0, loss, slope, step_p, new_eval_loss if whole else None)
        self._move_to(x0, t, step_p)
        # Martens: warm-start from the final CG iterate, not the backtracked one; never after a rejected step
        state["cg_solution"] = result.x.detach().clone() if t else None
        if not t:
            self.diagnostics["status"] = "rejected"
        self._record_ratio(rho, damping_next)
        self.diagnostics.update(step_size=t, ls_evals=n_ls, step_norm=t * math.sqrt(step_sq) if t else 0.0)
        self._finish_diagnostics(operator, fraction, product_price)
        return loss_t

    def _chunk_operator(
        self, batch: DataClosure, full: BatchEvaluation | None, fraction: float, chunk: int
    ) -> GGNOperator:
        """The Gauss-Newton operator on the step's curvature chunk (sec. 4.3), counted
        with the chunk's forward pass at their measured price."""
        reuses = full is not None and fraction == 1.0

        def build(_: Closure) -> GGNOperator:
            with torch.enable_grad():
                part = full if reuses and full is not None else batch.evaluate(fraction, chunk)
                outputs = part.output_tensor("HessianFree", "Gauss-Newton products")
                hessian_out = output_hessian_for(batch.loss_fn, outputs, part.targets)
                return GGNOperator(outputs, self._params, hessian_out)

        operator = build(batch)
        self._count_setup(operator, fraction, not reuses, self._price("curvature_setup", build, batch))
        return operator

    def _solve(
        self, batch: DataClosure, operator: GGNOperator, g: Tensor, squares: Tensor | None, damping: float
    ) -> tuple[CGResult, float | None]:
        """Preconditioned CG on the damped system, warm-started (sec. 4.5), stopped by
        Martens' rule (sec. 4.4), storing iterates for backtracking (sec. 4.6); and the
        measured price of one of its products."""
        group = self.param_groups[0]
        previous = self.global_state.get("cg_solution")
        preconditioner = None if squares is None else (squares + damping) ** group["preconditioner_exponent"]
        damped = DampedOperator(operator, damping).mv

        def solve(x0: Tensor | None, max_iter: int) -> CGResult:
            return cg(damped, -g, x0, max_iter=max_iter, tol=0.0, preconditioner=preconditioner,
                      martens_eps=group["martens_eps"], store_iterates=group["backtracking"])

        start = group["cg_decay"] * previous if previous is not None else None
        # a product is priced on the first iterations of this very solve: its cost depends on the vectors
        timed = min(group["cg_max_iter"], SOLVER_ITERATIONS)
        price = self._product_price(batch, operator, lambda: solve(start, timed))
        result = solve(start, group["cg_max_iter"])
        self._record_cg(result)
        return result, price

    def _loss_price(self, batch: DataClosure, fraction: float, chunk: int) -> float | None:
        """Price of a forward-only loss read on the host: on the curvature chunk, or the whole batch."""
        if fraction == 1.0:
            return self._batch_loss_price(batch)
        return self._price("chunk_loss", lambda _: host_floats(batch.loss_value(fraction, chunk)), batch)

    def _chunk_loss(self, batch: DataClosure, fraction: float, chunk: int) -> float:
        self._count("n_loss", fraction, self._loss_price(batch, fraction, chunk))
        (value,) = host_floats(batch.loss_value(fraction, chunk))
        return value

    def _choose_iterate(
        self, result: CGResult, eval_loss_at: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, float, float]:
        """The CG iterate to take, its model value and its evaluation loss."""
        if self.param_groups[0]["backtracking"] and result.iterates:
            return self._backtrack(result, eval_loss_at)
        (value,) = host_floats(eval_loss_at(result.x))
        return result.x, result.quad_value, value

    def _final_line_search(
        self, batch: DataClosure, x0: Tensor, loss: float, slope: float, step_p: Tensor, known: float | None
    ) -> tuple[float, int]:
        """Martens & Sutskever (2012) sec. 8.8: Armijo backtracking on the gradient batch;
        the full step is accepted unevaluated when its loss on that batch is ``known``."""
        group = self.param_groups[0]
        if slope >= 0:
            return 0.0, 0
        if known is not None and group["lr"] == 1.0 and math.isfinite(known) and known <= loss + group["ls_c1"] * slope:
            return 1.0, 0

        def batch_loss() -> Tensor:
            self._count("n_loss", cost=self._batch_loss_price(batch))
            return batch.loss_value()

        search = Armijo(c1=group["ls_c1"], shrink=group["ls_shrink"], max_evals=group["max_ls_evals"])
        ls = search.search(ParameterRay(self, x0, step_p, batch_loss), loss, slope, group["lr"])
        return ls.step, ls.n_evals

    def _gradient_and_squares(
        self, batch: DataClosure, with_squares: bool, retain: bool
    ) -> tuple[Tensor, list[Tensor], Tensor | None, BatchEvaluation | None]:
        r"""Loss (detached), gradient and (when asked) :math:`\sum_n w_n \nabla\ell_n^{\odot 2}`
        on the gradient batch, with its evaluation (graph kept when ``retain``) for a
        batch in memory; one forward and one backward pass per (loader) batch."""
        for p in self._params:
            p.grad = None
        self._fallback_share = 0.0
        if isinstance(batch, StreamingClosure):
            loss, grads, squares = self._streamed_gradient_and_squares(batch, with_squares)
            full = None
        else:
            full, grads, squares = self._piece_gradient_and_squares(batch, with_squares, retain, 1.0)
            loss = full.loss.detach()
        self._store_grads(grads)
        # the per-sample fallback counts the share of the batch it ran on; its cost is in the measured price
        fallback, price = self._fallback_share, None
        if with_squares:
            price = self._price("gradient_and_squares", self._squares_on, batch, per_batch=True)
        self._count("n_grad", 1 + fallback, price)
        return loss, grads, squares, full

    def _squares_on(self, probe: Closure) -> object:
        """The gradient and the preconditioner's squares on ``probe`` (what calibration times)."""
        assert isinstance(probe, BatchClosure), "a data closure is probed on a batch in memory (see _probe)"
        return self._piece_gradient_and_squares(probe, True, False, 1.0)

    def _streamed_gradient_and_squares(
        self, batch: StreamingClosure, with_squares: bool
    ) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """:meth:`_piece_gradient_and_squares` summed over the loader batches, each
        weighted by its share of the samples (the loss is a mean)."""
        total: list[Tensor] | None = None  # [loss, *gradient, squares]
        complete = with_squares  # squares only when every loader batch gave them
        for piece, weight in batch.pieces():
            part, found, part_squares = self._piece_gradient_and_squares(piece, with_squares, False, weight)
            complete = complete and part_squares is not None
            extra = [part_squares] if complete and part_squares is not None else []
            total = add_weighted(total, [part.loss.detach(), *found, *extra], weight)
        if total is None:
            raise ValueError("HessianFree: the streamed batch yielded no samples")
        n = len(self._params)
        return total[0], total[1 : n + 1], total[n + 1] if complete else None

    def _piece_gradient_and_squares(
        self, batch: BatchClosure, with_squares: bool, retain: bool, weight: float
    ) -> tuple[BatchEvaluation, list[Tensor], Tensor | None]:
        r"""Evaluation, gradient and (when asked) :math:`\sum_n w_n \nabla\ell_n^{\odot 2}`
        of one batch in memory, from one forward and one backward pass; ``weight`` is
        its share of the gradient batch (what its per-sample fallback costs)."""
        if not with_squares:
            with torch.enable_grad():
                full = batch.evaluate()
                found = torch.autograd.grad(full.loss, self._params, retain_graph=retain, allow_unused=True)
            return full, grads_or_zeros(found, self._params), None
        if self._statistics is None:
            self._statistics = LayerStatistics(
                batch.model, self._params, who="HessianFree",
                fallback="per-sample gradients (torch.func) for the preconditioner"
            )
        with torch.enable_grad(), self._statistics as stats:
            full = batch.evaluate()
            outputs = full.output_tensor("HessianFree", "its preconditioner's per-sample gradients")
            found = torch.autograd.grad(full.loss, [*self._params, outputs], retain_graph=retain, allow_unused=True)
        grads = grads_or_zeros(found, self._params)
        if found[-1] is None or not bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):  # one read
            return full, grads, None
        # the empirical Fisher of L = sum_n w_n l_n weighs sample n by w_n = 1 / c_n
        scale = per_sample_scale(batch.loss_fn, outputs, full.targets, found[-1])
        by_param = stats.grad_squares(scale.clamp_min(0).sqrt())
        missing = [p for p in self._params if p not in by_param]
        if missing:
            weights = torch.where(
                scale > 0, 1 / scale.clamp_min(torch.finfo(scale.dtype).tiny), torch.zeros_like(scale)
            )
            by_param.update(zip(missing, per_sample_grad_squares(
                batch.model, batch.loss_fn, batch.inputs, batch.targets, missing, weights=weights)))
            self._fallback_share += weight
        return full, grads, self._flatten(by_param[p] for p in self._params)

    def _backtrack(self, result: CGResult, loss_at: Callable[[Tensor], Tensor]) -> tuple[Tensor, float, float]:
        """Martens (2010) sec. 4.6: from the last stored CG iterate walk back while
        the loss falls; return the chosen iterate, its model value and its loss
        (one host read per iterate tried)."""
        iterates = result.iterates
        best = len(iterates) - 1
        (best_loss,) = host_floats(loss_at(iterates[best][1]))
        for j in range(len(iterates) - 2, -1, -1):
            (candidate,) = host_floats(loss_at(iterates[j][1]))
            if not candidate < best_loss:
                break
            best, best_loss = j, candidate
        i, x = iterates[best]
        self.diagnostics["backtracked_to_iter"] = i
        return x, result.quad_values[i], best_loss
