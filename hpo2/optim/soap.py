r"""SOAP (Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson & Kakade,
"SOAP: improving and stabilizing Shampoo using Adam", ICLR 2025; arXiv 2409.11321):
Adam run in the eigenbasis of Shampoo's preconditioner.

For a matrix parameter (conv kernels reshaped to ``(out, in*kh*kw)``) with
gradient :math:`G_t`, Shampoo's factors and their eigenbases

.. math::
   L_t = \beta_s L_{t-1} + (1-\beta_s) G_t G_t^\top,\quad
   R_t = \beta_s R_{t-1} + (1-\beta_s) G_t^\top G_t,\quad
   L \approx Q_L \Lambda_L Q_L^\top,\ R \approx Q_R \Lambda_R Q_R^\top

rotate the gradient into :math:`G'_t = Q_L^\top G_t Q_R`, where Adam's second moment
lives (Algorithm 3 of the paper):

.. math::
   M_t &= \beta_1 M_{t-1} + (1-\beta_1) G_t, \qquad
   V_t = \beta_2 V_{t-1} + (1-\beta_2)\, G'_t \odot G'_t, \\
   W_{t+1} &= W_t - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\;
      Q_L \frac{Q_L^\top M_t Q_R}{\sqrt{V_t} + \epsilon} Q_R^\top
      - \eta \lambda W_t .

After the update the factors take in :math:`G_t`; every ``precondition_frequency``
steps the eigenbases are refreshed (``eigenbasis="power_qr"``: one power
iteration :math:`Q \leftarrow \mathrm{QR}(L Q)` with the columns ordered by the
estimated eigenvalues :math:`\mathrm{diag}(Q^\top L Q)` and :math:`V` permuted
alike, the paper's Algorithm 4; ``"eigh"``: an exact eigendecomposition).  The first
step only initialises the factors and bases with ``eigh`` (as the authors' code
does).  A side longer than ``max_precond_dim`` keeps the identity basis; 1-d
parameters therefore run plain Adam.  Defaults are the paper's.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.optim.base import Closure
from hpo2.optim.costs import device_clock
from hpo2.optim.matrix_base import MatrixPreconditioner, as_matrix
from hpo2.optim.moments import corrected_step_size, update_first_moment_, update_second_moment_
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, document_settings


class SOAPSettings(OptimizerSettings):
    """Settings of :class:`SOAP` (paper defaults; ``shampoo_beta`` unset means ``beta2``)."""

    family: ClassVar[str] = "Kronecker-factored"
    reference: ClassVar[str] = "Vyas et al., SOAP, ICLR 2025 (arXiv 2409.11321)"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 3e-3
    """Learning rate eta."""
    beta1: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.95
    """Decay of the gradient's moving average M."""
    beta2: Annotated[float, Field(ge=0, lt=1), FloatRange(0.9, 0.9999, log=True)] = 0.95
    """Decay of Adam's second moment V in the eigenbasis."""
    shampoo_beta: Annotated[float | None, Field(ge=0, lt=1)] = None
    """Decay of Shampoo's factors L, R (None: beta2)."""
    eps: Annotated[float, Field(gt=0)] = 1e-8
    """Added to sqrt(V) in Adam's denominator."""
    weight_decay: Annotated[float, Field(ge=0), FloatRange(1e-5, 0.3, log=True)] = 1e-2
    """Decoupled weight decay lambda."""
    precondition_frequency: Annotated[int, Field(ge=1), IntRange(1, 100, log=True)] = 10
    """Refresh the eigenbases every this many steps."""
    max_precond_dim: Annotated[int, Field(ge=1)] = 10000
    """A side longer than this keeps the identity basis (plain Adam along it)."""
    eigenbasis: Annotated[Literal["power_qr", "eigh"], Choice(("power_qr", "eigh"))] = "power_qr"
    """Basis refresh: one power iteration + QR ('power_qr', paper Alg. 4) or an exact 'eigh'."""


def _rotate(x: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """:math:`Q_L^\\top X Q_R` (a missing basis is the identity)."""
    if left is not None:
        x = left.T @ x
    return x @ right if right is not None else x


def _rotate_back(x: Tensor, left: Tensor | None, right: Tensor | None) -> Tensor:
    """:math:`Q_L X Q_R^\\top`."""
    if left is not None:
        x = left @ x
    return x @ right.T if right is not None else x


@document_settings
class SOAP(MatrixPreconditioner):
    r"""SOAP as a ``torch.optim.Optimizer``; see the module docstring.

    Diagnostics per step: ``basis_refreshes`` (eigenbases recomputed this step),
    ``inverse_seconds`` (spent on them), ``condition_number`` (largest
    :math:`\\lambda_{max}/\\lambda_{min}` estimate of the refreshed factors).

    Example:
        Thirty steps on a matrix least-squares problem:

        >>> import torch
        >>> from hpo2.optim import SOAP
        >>> _ = torch.manual_seed(0)
        >>> target = torch.randn(4, 3)
        >>> w = torch.zeros(4, 3, requires_grad=True)
        >>> opt = SOAP([w], lr=0.1, precondition_frequency=1)
        >>> losses = [float(opt.step(lambda: ((w - target) ** 2).sum())) for _ in range(30)]
        >>> losses[-1] < 0.1 * losses[0]
        True
    """

    Settings = SOAPSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 3e-3,
        beta1: float = 0.95,
        beta2: float = 0.95,
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        eigenbasis: Literal["power_qr", "eigh"] = "power_qr",
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, beta1=beta1, beta2=beta2, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
            precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim, eigenbasis=eigenbasis
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        self._refreshes, self._inverse_seconds, self._condition = 0, 0.0, 0.0
        return super().step(closure)

    def _update(self, group: dict[str, Any], p: Tensor, grad: Tensor, state: dict[str, Any]) -> None:
        g = as_matrix(grad) if p.dim() >= 2 else grad.reshape(1, -1)
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
            state["factors"] = [
                g.new_zeros(n, n) if p.dim() >= 2 and n <= group["max_precond_dim"] else None for n in g.shape
            ]
            state["bases"] = [None, None]
            self._update_factors(group, state, g, initial=True)
            return
        state["step"] += 1
        t, b1, b2 = state["step"], group["beta1"], group["beta2"]
        left, right = state["bases"]
        update_first_moment_(state["exp_avg"], g, b1)
        update_second_moment_(state["exp_avg_sq"], _rotate(g, left, right), b2)
        adam = _rotate(state["exp_avg"], left, right) / (state["exp_avg_sq"].sqrt() + group["eps"])
        step_size = corrected_step_size(group["lr"], b1, b2, t)
        p.add_(_rotate_back(adam, left, right).view_as(p), alpha=-step_size)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        self._update_factors(group, state, g, initial=False)

    def _update_factors(self, group: dict[str, Any], state: dict[str, Any], g: Tensor, initial: bool) -> None:
        beta = group["shampoo_beta"] if group["shampoo_beta"] is not None else group["beta2"]
        left, right = state["factors"]
        if left is not None:
            left.mul_(beta).add_(g @ g.T, alpha=1 - beta)
        if right is not None:
            right.mul_(beta).add_(g.T @ g, alpha=1 - beta)
        if not (initial or state["step"] % group["precondition_frequency"] == 0):
            return
        started = device_clock(g.device)
        for side, factor in enumerate(state["factors"]):
            if factor is None:
                continue
            if initial or group["eigenbasis"] == "eigh":
                state["bases"][side] = self._eigenbasis(factor, state, side)
            else:
                state["bases"][side] = self._power_qr(factor, state, side)
            self._refreshes += 1
        self._inverse_seconds += device_clock(g.device) - started

    def _eigenbasis(self, factor: Tensor, state: dict[str, Any], side: int) -> Tensor:
        """Eigenvectors by ``eigh`` in float64, largest eigenvalue first; ``V`` is not
        rotated (the paper's choice: it is a running estimate in the new basis)."""
        values, vectors = torch.linalg.eigh(factor.double())
        self._note_condition(values)
        return vectors.flip(1).to(factor.dtype)

    def _power_qr(self, factor: Tensor, state: dict[str, Any], side: int) -> Tensor:
        """One power iteration and QR (Algorithm 4): order the current basis by the
        estimated eigenvalues :math:`\\mathrm{diag}(Q^\\top F Q)`, permute ``V`` alike."""
        basis = state["bases"][side]
        product = factor @ basis
        estimated = (basis * product).sum(0)
        order = torch.argsort(estimated, descending=True)
        self._note_condition(estimated)
        state["exp_avg_sq"] = state["exp_avg_sq"].index_select(side, order)
        q, _ = torch.linalg.qr(product[:, order])
        return q

    def _note_condition(self, values: Tensor) -> None:
        values = values.abs()
        self._condition = max(self._condition, float(values.max() / values.min().clamp_min(1e-30)))

    def _summarise(self) -> None:
        self.diagnostics.update(
            basis_refreshes=self._refreshes, inverse_seconds=self._inverse_seconds, condition_number=self._condition
        )
