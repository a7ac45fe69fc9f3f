r"""Shampoo (Gupta, Koren & Singer, "Shampoo: preconditioned stochastic tensor
optimization", ICML 2018), in the practical form of Anil et al. ("Scalable second
order optimization for deep learning", 2020) and Distributed Shampoo (Shi et al.
2023): Adam grafting, a preconditioner refresh interval, a start step, ε, and
blocking of large dimensions.

For a matrix parameter :math:`W \in \mathbb R^{m\times n}` (conv kernels reshaped to
``(out, in*kh*kw)``) with gradient :math:`G_t`, per block of at most
``max_preconditioner_dim`` rows and columns:

.. math::
   L_t &= \beta_2 L_{t-1} + (1-\beta_2)\, G_t G_t^\top, \qquad
   R_t = \beta_2 R_{t-1} + (1-\beta_2)\, G_t^\top G_t
   \quad(\beta_2 = 1:\ \text{plain sums, Gupta et al.}), \\
   M_t &= \beta_1 M_{t-1} + (1-\beta_1) G_t \quad\text{(bias-corrected; } \beta_1 = 0:\ M_t = G_t), \\
   P_t &= \hat L^{-1/4}\, M_t\, \hat R^{-1/4}, \qquad
   \hat L = L/(1-\beta_2^t) + \epsilon I \ \text{(likewise } \hat R),

with the inverse fourth roots recomputed by ``eigh`` every
``precondition_frequency`` steps from ``start_preconditioning_step`` on (between
refreshes the last roots are reused unchanged).  ``eigh`` runs in the factor's dtype
(``eigh_precision="factor"``, Distributed Shampoo's default: float32 for a float32
model) and is retried in float64 when it fails or its probe-checked accuracy is off
(:mod:`hpo2.optim.inverse_roots`; counted in ``root_retries``); ``"float64"`` always
decomposes in float64.  If float64 fails too, the previous root is kept and counted
in ``root_failures``.  **Adam grafting** (Agarwal et al. 2020; Anil et
al. 2020, sec. 3.3) takes the direction of :math:`P_t` and the per-block norm of
Adam's step :math:`A_t = M_t / (\sqrt{\hat v_t} + \epsilon_g)` (its own ``adam_beta2`` and
``adam_eps`` :math:`= \epsilon_g`):
:math:`D_t = P_t\, \|A_t\| / \|P_t\|`; before the start step, and for 1-d
parameters, :math:`D_t = A_t` (Adam).  The update is
:math:`W \leftarrow (1 - \eta\lambda) W - \eta D_t` (decoupled weight decay).

Defaults follow Distributed Shampoo's (``eps`` 1e-12,
``max_preconditioner_dim`` 1024) and its AlgoPerf submission's (betas, refresh
every 20 steps after 20 Adam steps; Anil et al. 2020 advise starting late because
early factors are ill conditioned).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.optim.base import Closure
from hpo2.optim.costs import device_clock
from hpo2.optim.inverse_roots import EighPrecision, inverse_root
from hpo2.optim.matrix_base import MatrixPreconditioner, as_matrix, block_slices
from hpo2.optim.moments import adam_denominator, bias_corrected, update_first_moment_, update_second_moment_
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, document_settings


class ShampooSettings(OptimizerSettings):
    """Settings of :class:`Shampoo` (Distributed Shampoo / AlgoPerf defaults)."""

    family: ClassVar[str] = "Kronecker-factored"
    reference: ClassVar[str] = "Gupta, Koren & Singer, ICML 2018; Anil et al. 2020 (arXiv 2002.09018)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    """Learning rate eta."""
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.99)] = 0.9
    """Decay of the gradient's moving average (0: the raw gradient)."""
    beta2: Annotated[float, Field(gt=0, le=1), FloatRange(0.9, 0.9999, log=True)] = 0.999
    """Decay of the factors L, R (1: plain sums, Gupta et al. 2018)."""
    eps: Annotated[float, Field(gt=0), FloatRange(1e-12, 1e-4, log=True)] = 1e-12
    """Added to the factors' diagonal before the inverse fourth root."""
    grafting: Literal["adam", "none"] = "adam"
    """'adam': Shampoo's direction with Adam's per-block step norm (Anil et al. 2020 sec. 3.3); 'none'."""
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    """Decay of Adam's second moment in the grafting."""
    adam_eps: Annotated[float, Field(gt=0)] = 1e-8
    """Epsilon of Adam's step in the grafting."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """Decoupled weight decay lambda."""
    precondition_frequency: Annotated[int, Field(ge=1), IntRange(1, 100, log=True)] = 20
    """Recompute the inverse fourth roots every this many steps."""
    start_preconditioning_step: Annotated[int, Field(ge=1)] = 20
    """Step from which Shampoo's direction is used (Adam before it)."""
    max_preconditioner_dim: Annotated[int, Field(ge=1)] = 1024
    """Largest block side: bigger dimensions are split into blocks (Anil et al. 2020 sec. 3.2)."""
    eigh_precision: Annotated[EighPrecision, Choice(("factor", "float64"))] = "factor"
    """Precision of the roots' eigh: 'factor' (the factor's dtype, checked, retried in float64) or 'float64'."""

    renamed: ClassVar[dict[str, str]] = {"epsilon": "eps", "graft_beta2": "adam_beta2", "graft_eps": "adam_eps"}


@document_settings
class Shampoo(MatrixPreconditioner):
    """Shampoo as a ``torch.optim.Optimizer``; see the module docstring.

    Diagnostics per step: ``root_refreshes`` (inverse roots computed this step),
    ``root_failures`` (``eigh`` failures so far), ``root_retries`` (float64 retries of a
    float32 ``eigh`` so far), ``inverse_seconds``,
    ``condition_number`` (largest of the refreshed factors, ε included),
    ``preconditioned_fraction`` (of matrix parameters stepped with Shampoo).

    Example:
        Thirty steps on a matrix least-squares problem:

        >>> import torch
        >>> from hpo2.optim import Shampoo
        >>> _ = torch.manual_seed(0)
        >>> target = torch.randn(4, 3)
        >>> w = torch.zeros(4, 3, requires_grad=True)
        >>> opt = Shampoo([w], lr=0.1, start_preconditioning_step=2, precondition_frequency=1)
        >>> losses = [float(opt.step(lambda: ((w - target) ** 2).sum())) for _ in range(30)]
        >>> losses[-1] < 0.1 * losses[0]
        True
    """

    Settings = ShampooSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 1e-3,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-12,
        grafting: Literal["adam", "none"] = "adam",
        adam_beta2: float = 0.999,
        adam_eps: float = 1e-8,
        weight_decay: float = 0.0,
        precondition_frequency: int = 20,
        start_preconditioning_step: int = 20,
        max_preconditioner_dim: int = 1024,
        eigh_precision: EighPrecision = "factor",
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, grafting=grafting, adam_beta2=adam_beta2,
            adam_eps=adam_eps, weight_decay=weight_decay, precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step, max_preconditioner_dim=max_preconditioner_dim,
            eigh_precision=eigh_precision,
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        self._refreshes, self._inverse_seconds, self._condition = 0, 0.0, 0.0
        self._preconditioned = self._matrices = 0
        return super().step(closure)

    def _update(self, group: dict[str, Any], p: Tensor, grad: Tensor, state: dict[str, Any]) -> None:
        b1, ab2 = group["beta1"], group["adam_beta2"]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            if p.dim() >= 2:
                m = as_matrix(p)
                state["blocks"] = [
                    {
                        "left": m.new_zeros(r.stop - r.start, r.stop - r.start),
                        "right": m.new_zeros(c.stop - c.start, c.stop - c.start),
                        "left_root": None,
                        "right_root": None,
                    }
                    for r, c in block_slices(m.shape[0], m.shape[1], group["max_preconditioner_dim"])
                ]
        state["step"] += 1
        t = state["step"]
        momentum = bias_corrected(update_first_moment_(state["exp_avg"], grad, b1), b1, t) if b1 > 0 else grad
        update_second_moment_(state["exp_avg_sq"], grad, ab2)
        adam = momentum / adam_denominator(state["exp_avg_sq"], ab2, t, group["adam_eps"])
        direction = adam if group["grafting"] == "adam" else momentum.clone()
        if p.dim() >= 2:
            self._matrices += 1
            if self._precondition(
                group, state, as_matrix(grad), as_matrix(momentum), as_matrix(adam), as_matrix(direction)
            ):
                self._preconditioned += 1
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(direction, alpha=-group["lr"])

    def _precondition(
        self,
        group: dict[str, Any],
        state: dict[str, Any],
        grad: Tensor,
        momentum: Tensor,
        adam: Tensor,
        direction: Tensor,
    ) -> bool:
        """Update the factors; write the grafted Shampoo direction into ``direction``
        (a matrix view of the step) once roots exist.  True if it did."""
        b2, t, start = group["beta2"], state["step"], group["start_preconditioning_step"]
        refresh = t >= start and (t - start) % group["precondition_frequency"] == 0
        correction = 1.0 if b2 == 1 else 1 - b2**t
        used = False
        slices = block_slices(grad.shape[0], grad.shape[1], group["max_preconditioner_dim"])
        for block, (rows, cols) in zip(state["blocks"], slices):
            g = grad[rows, cols]
            for key, outer in (("left", g @ g.T), ("right", g.T @ g)):
                if b2 == 1:
                    block[key].add_(outer)
                else:
                    block[key].mul_(b2).add_(outer, alpha=1 - b2)
                if refresh:
                    self._refresh_root(block, key, correction, group["eps"], group["eigh_precision"])
            if t < start or block["left_root"] is None or block["right_root"] is None:
                continue
            shampoo = block["left_root"] @ momentum[rows, cols] @ block["right_root"]
            if group["grafting"] == "adam":
                shampoo.mul_(adam[rows, cols].norm() / shampoo.norm().clamp_min(1e-30))
            direction[rows, cols] = shampoo
            used = True
        return used

    def _refresh_root(
        self, block: dict[str, Any], key: str, correction: float, eps: float, precision: EighPrecision
    ) -> None:
        device = block[key].device
        started = device_clock(device)
        result = inverse_root(block[key] / correction, 4.0, eps, precision)
        self._inverse_seconds += device_clock(device) - started
        if result is None:
            self.global_state["root_failures"] = int(self.global_state.get("root_failures", 0)) + 1
            return
        block[f"{key}_root"], condition, retried = result
        self.global_state["root_retries"] = int(self.global_state.get("root_retries", 0)) + int(retried)
        self._refreshes += 1
        self._condition = max(self._condition, condition)

    def _summarise(self) -> None:
        self.diagnostics.update(
            root_refreshes=self._refreshes,
            root_failures=int(self.global_state.get("root_failures", 0)),
            root_retries=int(self.global_state.get("root_retries", 0)),
            inverse_seconds=self._inverse_seconds,
            condition_number=self._condition,
            preconditioned_fraction=self._preconditioned / max(self._matrices, 1),
        )
