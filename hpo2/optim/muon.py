r"""Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural
networks", kellerjordan.github.io/posts/muon) on the hidden weight matrices,
``torch.optim.AdamW`` on every other parameter, as one optimizer.

Muon's update for a weight matrix with gradient :math:`G_t` (momentum as an
exponential average, as Jordan et al.'s and ``torch.optim.Muon``'s code keep it):

.. math::
   B_t = \mu B_{t-1} + (1-\mu) G_t,\qquad
   O_t = \mathrm{NS}_k\big((1-\mu) G_t + \mu B_t\big)\ \text{(Nesterov; else } \mathrm{NS}_k(B_t)),\qquad
   W \leftarrow (1-\eta\lambda) W - \eta \sqrt{\max(1, m/n)}\; O_t

for an ``m x n`` matrix (a conv kernel ``(out, in, kh, kw)`` is flattened to
``(out, in kh kw)``, as the authors do).

**Newton-Schulz** (:func:`newton_schulz`): with :math:`X_0 = M / \lVert M \rVert_F`
(so every singular value is at most 1) and :math:`A = X X^\top`,

.. math::  X_{j+1} = a X_j + (b A + c A^2) X_j, \qquad (a, b, c) = (3.4445, -4.7750, 2.0315),

which maps each singular value :math:`s` of :math:`X_j` to
:math:`p(s) = a s + b s^3 + c s^5` and keeps the singular vectors: after
:math:`k` steps :math:`M = U S V^\top` becomes :math:`U\, p^{k}(S/\lVert M\rVert_F)\, V^\top`.
Jordan et al. chose the coefficients for the steepest slope at zero (a = 3.4445:
small singular values grow fast) at the price of not converging to 1: after five
steps every singular value at least 1% of :math:`\lVert M \rVert_F` lands in
[0.682, 1.134] (computed from :math:`p`; up to 1.21 for those between 0.2% and
1%), so :math:`O \approx U V^\top`, the orthogonal polar factor, within that band.

**The iteration's dtype** (``ns_dtype``): ``torch.optim.Muon`` always runs it in
bfloat16, which GPUs do fast.  On a CPU, torch multiplies bfloat16 matrices fast
only through oneDNN on a CPU that supports it (AVX512-BF16, AMX); elsewhere a
generic kernel takes 10-30x float32's time: issue 24 measured five iterations on a
784x500 matrix at 4.0 s in bfloat16 against 0.14 s in float32, and on an AMD EPYC
(AVX512-BF16, one thread, a loaded machine) with oneDNN switched off they took
4.2-5.3 s against 0.3 s -- while with oneDNN on, bfloat16 took 0.05-0.15 s against
float32's 0.26-0.32 s (``benchmarks/muon_newton_schulz.py``).  float32 is fast on
every CPU and the more accurate, so ``"auto"`` (default) iterates in float32 on the
CPU and in bfloat16 on an accelerator; ``"float32"`` / ``"bfloat16"`` force one
(``"bfloat16"`` pays on a CPU with native bfloat16).
``torch.optim.Muon`` exposes no dtype, so hpo2 runs the iteration itself
(:class:`MatrixMuon`); with ``ns_dtype="bfloat16"`` its step is bit for bit
``torch.optim.Muon``'s (tests/optim/test_muon.py).

**Which parameters Muon takes** (Jordan et al.: Muon is for hidden layers; the
input embedding, the output layer and gains/biases belong to AdamW).  Given the
model (``MuonWithAdamW(model)``; hpo2's training loop passes it), Muon takes every
parameter of two or more dimensions except

* those of ``nn.Embedding`` modules (token and position tables; also a head whose
  weight is tied to an embedding), and
* those of the **output layer**: the last module in ``model.modules()`` order that
  owns a parameter of two or more dimensions (the classifier or LM head of models
  that register it last, as ``nn.Sequential`` stacks and most model code do).

Given bare tensors (``model.parameters()``), the modules are unknown and every
parameter of two or more dimensions goes to Muon.  Given groups
``[{"params": [...], "use_muon": True}, {"params": [...], "use_muon": False}]`` (as
Jordan et al.'s ``MuonWithAuxAdam`` takes them), each group goes where it says: the
way to override the rule.  Defaults are Jordan et al.'s
(lr 0.02, momentum 0.95, Nesterov, 5 steps, no weight decay); the AdamW part uses
Adam's paper defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from hpo2.optim.base import Closure, LoopOptimizer
from hpo2.optim.baselines import first_order_closure_step
from hpo2.optim.settings import FloatRange, IntRange, OptimizerSettings, document_settings

#: Jordan et al.'s quintic coefficients (a, b, c): p(s) = a s + b s^3 + c s^5
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
NSDtype = Literal["auto", "float32", "bfloat16"]
_NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def newton_schulz(matrix: Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""``steps`` quintic Newton-Schulz iterations on a 2-d ``matrix`` in ``dtype``
    (module docstring): :math:`U S V^\top \mapsto U\, p^{k}(S / \lVert M \rVert_F)\, V^\top
    \approx U V^\top`.  Returned in ``dtype``.  A tall matrix is iterated transposed, so
    the Gram matrix is the smaller of the two."""
    if matrix.dim() != 2:
        raise ValueError(f"newton_schulz takes a 2-d matrix, got shape {tuple(matrix.shape)}")
    a, b, c = NS_COEFFICIENTS
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.to(dtype)
    x = x.T if tall else x
    x = x / x.norm().clamp_min(NS_EPS)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def ns_dtype_for(setting: str, device: torch.device) -> torch.dtype:
    """The dtype Newton-Schulz runs in: float32 on a CPU and bfloat16 elsewhere for
    ``"auto"``, else the one named."""
    if setting == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return _NS_DTYPES[setting]


class MatrixMuon(torch.optim.Optimizer):
    """Muon's update (module docstring) on parameters of two or more dimensions,
    flattened to ``(shape[0], -1)``; its state is ``momentum_buffer`` per parameter,
    as ``torch.optim.Muon``'s.  Used inside :class:`MuonWithAdamW`."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float,
        nesterov: bool,
        ns_steps: int,
        weight_decay: float,
        ns_dtype: NSDtype,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        ns_dtype=ns_dtype)  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() < 2:
                    raise ValueError(f"Muon takes parameters of 2 or more dimensions, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor | None:  # type: ignore[override]  # closures return a Tensor
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - mu)
                update = grad.lerp(buffer, mu) if group["nesterov"] else buffer
                matrix = update.reshape(update.shape[0], -1)
                orthogonal = newton_schulz(matrix, group["ns_steps"], ns_dtype_for(group["ns_dtype"], p.device))
                scale = math.sqrt(max(1.0, matrix.shape[0] / matrix.shape[1]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(orthogonal.reshape(p.shape).to(p.dtype), alpha=-group["lr"] * scale)
        return loss


def _split_groups(groups: list[dict[str, Any]]) -> tuple[list[Tensor], list[Tensor]]:
    """The ``use_muon`` groups' parameters and the others' (each group needs both keys)."""
    split: tuple[list[Tensor], list[Tensor]] = ([], [])
    for i, group in enumerate(groups):
        if set(group) != {"params", "use_muon"} or not isinstance(group["use_muon"], bool):
            raise ValueError(f"parameter group {i} has keys {sorted(group)}: give exactly 'params' and "
                             "'use_muon' (true or false)")
        split[0 if group["use_muon"] else 1].extend(p for p in group["params"] if p.requires_grad)
    return split


def _output_layer(model: nn.Module) -> nn.Module | None:
    """The last module in ``model.modules()`` order that owns a parameter of 2+ dimensions."""
    owners = [m for m in model.modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    return owners[-1] if owners else None


def muon_parameter_split(
    params: Iterable[Tensor] | Iterable[dict[str, Any]] | nn.Module,
) -> tuple[list[Tensor], list[Tensor]]:
    """``(muon, adamw)``: the parameters (those that require grad) for Muon and for
    AdamW, by the rule of the module docstring -- with a model, embeddings and the
    output layer go to AdamW; with groups, their ``use_muon``; with bare tensors,
    only the dimension decides."""
    if not isinstance(params, nn.Module):
        items = list(params)
        if items and all(isinstance(item, dict) for item in items):
            return _split_groups(items)  # type: ignore[arg-type]  # all dicts
        tensors = [p for p in items if isinstance(p, Tensor) and p.requires_grad]
        return [p for p in tensors if p.dim() >= 2], [p for p in tensors if p.dim() < 2]
    model = params
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    head = _output_layer(model)
    if head is not None:
        excluded |= {id(p) for p in head.parameters(recurse=False)}
    tensors = [p for p in model.parameters() if p.requires_grad]
    muon = [p for p in tensors if p.dim() >= 2 and id(p) not in excluded]
    chosen = {id(p) for p in muon}
    return muon, [p for p in tensors if id(p) not in chosen]


class MuonSettings(OptimizerSettings):
    """Settings of :class:`MuonWithAdamW` (Muon's published defaults; ``adam_*``, AdamW's, for
    the non-matrix parameters)."""

    family: ClassVar[str] = "first-order"
    reference: ClassVar[str] = "Jordan et al. 2024, kellerjordan.github.io/posts/muon"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 0.3, log=True)] = 0.02
    """Muon's learning rate for the hidden weight matrices."""
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.99)] = 0.95
    """Muon's momentum mu."""
    nesterov: bool = True
    """Use Nesterov momentum in Muon."""
    ns_steps: Annotated[int, Field(ge=1, lt=100), IntRange(3, 8)] = 5
    """Newton-Schulz iterations orthogonalizing each update."""
    ns_dtype: NSDtype = "auto"
    """Newton-Schulz arithmetic: 'auto' (float32 on a CPU, bfloat16 on an accelerator), 'float32' or 'bfloat16'."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """Muon's decoupled weight decay."""
    adam_lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    """AdamW learning rate for the other parameters (embeddings, output layer, biases, norms)."""
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """AdamW beta1 for the other parameters."""
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    """AdamW beta2 for the other parameters."""
    adam_eps: Annotated[float, Field(gt=0)] = 1e-8
    """AdamW epsilon for the other parameters."""
    adam_weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW decoupled weight decay for the other parameters."""

    renamed: ClassVar[dict[str, str]] = {
        "adamw_lr": "adam_lr", "adamw_beta1": "adam_beta1", "adamw_beta2": "adam_beta2", "adamw_eps": "adam_eps",
        "adamw_weight_decay": "adam_weight_decay",
    }


@document_settings
class MuonWithAdamW(LoopOptimizer):
    """Steps :class:`MatrixMuon` on the hidden weight matrices and ``torch.optim.AdamW``
    on the rest (the split: module docstring), as one optimizer.

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
        Given the model, Muon takes the hidden layer's weight, AdamW the output layer
        and the biases; stepped torch-style:

        >>> import torch
        >>> from hpo2.optim import MuonWithAdamW
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        >>> x, y = torch.randn(64, 8), torch.randn(64, 4)
        >>> opt = MuonWithAdamW(model, lr=0.05, adam_lr=0.05)
        >>> [p.shape for p in opt.param_groups[0]["params"]]
        [torch.Size([16, 8])]
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
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | nn.Module,
        *,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: NSDtype = "auto",
        weight_decay: float = 0.0,
        adam_lr: float = 1e-3,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        adam_eps: float = 1e-8,
        adam_weight_decay: float = 0.0,
    ) -> None:
        settings = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype,
            weight_decay=weight_decay, adam_lr=adam_lr, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
            adam_eps=adam_eps, adam_weight_decay=adam_weight_decay,
        )
        s = MuonSettings.parse(settings, where=type(self).__name__)
        matrices, others = muon_parameter_split(params)
        self._parts: list[torch.optim.Optimizer] = []
        if matrices:
            self._parts.append(
                MatrixMuon(
                    matrices,
                    lr=s.lr,
                    momentum=s.momentum,
                    nesterov=s.nesterov,
                    ns_steps=s.ns_steps,
                    weight_decay=s.weight_decay,
                    ns_dtype=s.ns_dtype,
                )
            )
        if others:
            self._parts.append(
                torch.optim.AdamW(
                    others,
                    lr=s.adam_lr,
                    betas=(s.adam_beta1, s.adam_beta2),
                    eps=s.adam_eps,
                    weight_decay=s.adam_weight_decay,
                )
            )
        if not self._parts:
            raise ValueError("MuonWithAdamW got no parameters that require grad")
        self.settings = s
        self.diagnostics = {}
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

    def step(self, closure: Closure | None = None) -> Tensor | None:  # type: ignore[override]  # also torch's step()
        if closure is None:
            self._step_parts()
            return None
        loss, self.diagnostics = first_order_closure_step(self, closure, self._step_parts)
        return loss

    @torch.no_grad()
    def _step_parts(self) -> None:
        for part in self._parts:
            part.step()
