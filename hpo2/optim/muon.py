r"""Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural
networks", kellerjordan.github.io/posts/muon) as a first-order comparison point:
``torch.optim.Muon`` for the 2-d weight matrices, ``torch.optim.AdamW`` for every
other parameter (biases, norm scales, and conv kernels, which ``torch.optim.Muon``
refuses).

Muon's update for a weight matrix with gradient :math:`G_t`:

.. math::
   B_t = \mu B_{t-1} + G_t,\qquad
   O_t = \mathrm{NS}_5(G_t + \mu B_t)\ \text{(Nesterov)},\qquad
   W \leftarrow (1-\eta\lambda) W - \eta \sqrt{\max(1, m/n)}\; O_t,

where :math:`\mathrm{NS}_5` is five quintic Newton-Schulz iterations that map
:math:`U S V^\top` to approximately :math:`U V^\top` (singular values land in about
[0.7, 1.2] rather than exactly 1: the coefficients trade accuracy for speed).
Defaults are Jordan et al.'s (lr 0.02, momentum 0.95, Nesterov, 5 steps, no weight
decay); the AdamW part uses Adam's paper defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from hpo2.optim.baselines import first_order_closure_step
from hpo2.optim.settings import FloatRange, IntRange, OptimizerSettings, document_settings


class MuonSettings(OptimizerSettings):
    """Settings of :class:`MuonWithAdamW` (Muon's published defaults; ``adamw_*`` for
    the non-matrix parameters)."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Jordan et al. 2024, kellerjordan.github.io/posts/muon"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 0.3, log=True)] = 0.02
    """Muon's learning rate for the 2-d weight matrices."""
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.95
    """Muon's momentum mu."""
    nesterov: bool = True
    """Use Nesterov momentum in Muon."""
    ns_steps: Annotated[int, Field(ge=1, lt=100), IntRange(3, 8)] = 5
    """Newton-Schulz iterations orthogonalizing each update."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """Muon's decoupled weight decay."""
    adamw_lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    """AdamW learning rate for the other parameters (biases, norms, conv kernels)."""
    adamw_beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """AdamW beta1 for the other parameters."""
    adamw_beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    """AdamW beta2 for the other parameters."""
    adamw_eps: Annotated[float, Field(gt=0)] = 1e-8
    """AdamW epsilon for the other parameters."""
    adamw_weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW decoupled weight decay for the other parameters."""


@document_settings
class MuonWithAdamW(torch.optim.Optimizer):
    """Steps ``torch.optim.Muon`` on the 2-d parameters and ``torch.optim.AdamW`` on
    the rest, as one optimizer.

    Its ``param_groups`` are the Muon groups followed by the AdamW groups and both
    inner optimizers share its ``state``, so ``state_dict`` / ``load_state_dict``
    and ``zero_grad`` work as for any torch optimizer.

    ``charges_step_time``: its Newton-Schulz iterations cost about 0.7 of a gradient
    on the benchmark MLP (BENCHMARKS.md), so
    :func:`~hpo2.optim.baselines.first_order_closure_step` counts the step's measured
    time on top of the gradient.

    ``step(closure)`` takes a torch-style closure (it calls ``backward()``) or an hpo2
    one (it returns the loss; a :class:`~hpo2.optim.BatchClosure`), as the
    ``torch.optim`` baselines do (:mod:`hpo2.optim.baselines`), and leaves ``diagnostics``.

    Example:
        Muon takes the weight matrix, AdamW the bias; stepped torch-style:

        >>> import torch
        >>> from hpo2.optim import MuonWithAdamW
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(8, 4)
        >>> x, y = torch.randn(64, 8), torch.randn(64, 4)
        >>> opt = MuonWithAdamW(model.parameters(), lr=0.05, adamw_lr=0.05)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> losses = [opt.step(closure).item() for _ in range(30)]
        >>> losses[-1] < 0.7 * losses[0]
        True
    """

    charges_step_time = True

    Settings = MuonSettings

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adamw_lr: float = 1e-3,
        adamw_beta1: float = 0.9,
        adamw_beta2: float = 0.999,
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ) -> None:
        settings = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
            adamw_lr=adamw_lr, adamw_beta1=adamw_beta1, adamw_beta2=adamw_beta2, adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )
        s = MuonSettings.parse(settings, where=type(self).__name__)
        params = [p for p in params if p.requires_grad]
        matrices, others = [p for p in params if p.dim() == 2], [p for p in params if p.dim() != 2]
        self._parts: list[torch.optim.Optimizer] = []
        if matrices:
            self._parts.append(
                torch.optim.Muon(
                    matrices,
                    lr=s.lr,
                    momentum=s.momentum,
                    nesterov=s.nesterov,
                    ns_steps=s.ns_steps,
                    weight_decay=s.weight_decay,
                )
            )
        if others:
            self._parts.append(
                torch.optim.AdamW(
                    others,
                    lr=s.adamw_lr,
                    betas=(s.adamw_beta1, s.adamw_beta2),
                    eps=s.adamw_eps,
                    weight_decay=s.adamw_weight_decay,
                )
            )
        if not self._parts:
            raise ValueError("MuonWithAdamW got no parameters that require grad")
        self.settings = s
        self.diagnostics: dict[str, Any] = {}
        super().__init__([group for part in self._parts for group in part.param_groups], {})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this one's groups and state (again after a load)."""
        start = 0
        for part in self._parts:
            n = len(part.param_groups)
            part.param_groups = self.param_groups[start : start + n]
            part.state = self.state
            start += n

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]  # closures return a Tensor
        if closure is None:
            self._step_parts()
            return None
        loss, self.diagnostics = first_order_closure_step(self, closure, self._step_parts)
        return loss

    @torch.no_grad()
    def _step_parts(self) -> None:
        for part in self._parts:
            part.step()
