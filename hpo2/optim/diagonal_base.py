"""Shared machinery of the diagonal-curvature optimizers (AdaHessian, Sophia):
refreshing a diagonal estimate every ``hessian_refresh`` steps with seeded probes
whose generator state travels in ``state_dict``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from hpo2.curvature import HessianOperator, gauss_newton_bartlett_diagonal, grads_or_zeros, hutchinson_diagonal
from hpo2.curvature.diagonal import likelihood_name, supported_likelihoods
from hpo2.optim.base import Closure
from hpo2.optim.closure import require_batch_closure
from hpo2.optim.seeded import SeededOptimizer
from hpo2.solvers import host_floats


class DiagonalCurvatureOptimizer(SeededOptimizer):
    """Base of per-parameter methods that precondition with a curvature diagonal.

    Param groups are allowed (each with its own settings).  The probe generator is
    seeded from the ``seed`` setting and saved with the optimizer state, so a run
    resumed from ``state_dict`` draws the same probes.
    """

    joint = False

    def _prepare_step(
        self, closure: Closure | None, estimator: str
    ) -> tuple[Tensor, tuple[list[Tensor], list[Tensor] | None] | None]:
        """Count the step, take the gradient (and the diagonal on refresh steps),
        record diagnostics: the loss (detached, on the device) and the gradient with the
        diagonal or ``None``, which is ``None`` when the loss, gradient or diagonal is not
        finite (the step is then rejected and the parameters stay as they are)."""
        state = self.global_state
        step = int(state.get("global_step", 0)) + 1
        state["global_step"] = step
        first = self.param_groups[0]
        refresh = (step - 1) % first["hessian_refresh"] == 0
        self._start_diagnostics()
        loss_t, grads, diag = self._gradient_and_diagonal(closure, refresh, estimator, first["n_probes"])
        g_norm_t = torch.sqrt(torch.stack([(g.double() ** 2).sum() for g in grads]).sum())
        diag_ok = 1.0 if diag is None else torch.stack([torch.isfinite(d).all() for d in diag]).all()
        loss, g_norm, diag_finite = host_floats(loss_t, g_norm_t, diag_ok)  # one read for the step's checks
        self.diagnostics.update(loss=loss, grad_norm=g_norm, hessian_refreshed=int(refresh))
        if not self._check_finite(loss, g_norm if diag_finite else float("nan")):
            self._finish_diagnostics()
            return loss_t, None
        self._store_grads(grads)
        return loss_t, (grads, diag)

    def _per_parameter(
        self, grads: list[Tensor], diag: list[Tensor] | None
    ) -> Iterator[tuple[dict[str, Any], Tensor, Tensor, Tensor | None, dict[str, Any]]]:
        """Yield ``(group, param, grad, diagonal or None, state)`` in parameter order."""
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield group, p, grads[index], diag[index] if diag is not None else None, self.state[p]
                index += 1

    def _gradient_and_diagonal(
        self, closure: Closure | None, refresh: bool, estimator: str, n_probes: int
    ) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
        """Loss (detached) and gradient; on refresh steps also the diagonal estimate
        (``"hutchinson"``: E[z * Hz]; ``"gnb"``: Gauss-Newton-Bartlett)."""
        if not refresh:
            loss_tensor = self._call_closure(closure)
            found = torch.autograd.grad(loss_tensor, self._params, allow_unused=True)
            grads = grads_or_zeros(found, self._params)
            self._count("n_grad")
            return loss_tensor.detach(), grads, None
        if estimator == "hutchinson":
            loss_tensor = self._call_closure(closure)
            with torch.enable_grad():
                op = HessianOperator(loss_tensor, self._params)
            diag = hutchinson_diagonal(op, n_probes, self._generator)
            self._count("n_grad", cost=self._hessian_gradient_price(closure))
            n = op.n_products
            price = self._product_price(
                closure, op, lambda: hutchinson_diagonal(op, 1, _calibration_generator(self._generator))
            )
            self._count("n_hvp", n, None if price is None else n * price)
            return op.loss.detach(), op.gradient, diag
        batch = require_batch_closure(closure, type(self).__name__, "the Gauss-Newton-Bartlett estimator")
        output_loss = getattr(batch.loss_fn, "output_loss", batch.loss_fn)  # see output_hessian_for
        if not isinstance(output_loss, torch.nn.Module) or likelihood_name(output_loss) is None:
            raise ValueError(
                f"{type(self).__name__}: the Gauss-Newton-Bartlett estimator needs the loss to be one of "
                f"{supported_likelihoods()}, got {type(batch.loss_fn).__name__}; "
                "use estimator='hutchinson' for other losses"
            )
        for p in self._params:
            p.grad = None
        with torch.enable_grad():
            evaluation = batch.evaluate()
            found = torch.autograd.grad(evaluation.loss, self._params, retain_graph=True, allow_unused=True)
            grads = grads_or_zeros(found, self._params)
            outputs = evaluation.output_tensor(type(self).__name__, "the Gauss-Newton-Bartlett estimator")

            def probe_once(_: Closure) -> object:  # one more backward pass through the outputs' graph
                return gauss_newton_bartlett_diagonal(
                    outputs, self._params, output_loss, 1, _calibration_generator(self._generator),
                    retain_graph=True, targets=evaluation.targets
                )

            price = self._price("gnb_probe", probe_once, batch)
            diag = gauss_newton_bartlett_diagonal(
                outputs, self._params, output_loss, n_probes, self._generator, targets=evaluation.targets
            )
        self._count("n_grad")
        self._count("n_grad", n_probes, None if price is None else n_probes * price)
        return evaluation.loss.detach(), grads, diag


def _calibration_generator(generator: torch.Generator) -> torch.Generator:
    """A generator for the probes that calibration draws, so that the optimizer's own
    (``generator``, saved in its state) draws what it would without calibration."""
    return torch.Generator(generator.device).manual_seed(0)
