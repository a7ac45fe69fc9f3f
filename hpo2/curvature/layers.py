r"""Per-layer statistics from one backward pass: activations, output gradients,
squared per-sample gradient sums and Kronecker factors.

For a layer that is a linear map :math:`s = W \bar a` of its (homogeneous) input
:math:`\bar a = [a; 1]` (the 1 carries the bias; without it when the bias is not
among the recorded parameters: frozen, or not given to the optimizer), the gradient of a loss :math:`L`
is :math:`\nabla_W L = \sum_{n,t} g_{n,t} \bar a_{n,t}^\top` with the output
gradient :math:`g = \partial L / \partial s`; :math:`t` runs over the positions
that share the weights (one for ``nn.Linear`` on a 2-d input; every output pixel
for ``nn.Conv2d``, whose input is read as patches with
``torch.nn.functional.unfold``, so the convolution is a linear map on patches;
Grosse & Martens 2016, "A Kronecker-factored approximate Fisher matrix for
convolution layers", sec. 3).

With the per-sample scale :math:`c_n` (:func:`per_sample_scale`; :math:`c_n = N`
for a mean-reduced loss, 1 for a sum) the gradient of sample :math:`n`'s own loss
:math:`\ell_n` is

.. math::  \nabla_W \ell_n = c_n \sum_t g_{n,t} \bar a_{n,t}^\top ,

and one backward pass therefore gives, per layer,

* the **squared per-sample gradient sum** :math:`\sum_n (\nabla_W \ell_n)^{\odot 2}`,
  which for one position is :math:`((c \odot g)^{\odot 2})^\top (\bar a^{\odot 2})`
  (Martens 2010, sec. 4.7: the diagonal of the empirical Fisher for Hessian-free's
  preconditioner); with several positions the square is taken after the sum over
  positions, per sample;
* the **Kronecker factors** (K-FAC, Martens & Grosse 2015, sec. 3; KFC for
  convolutions, Grosse & Martens 2016, eq. 5):
  :math:`A = \frac1N \sum_{n,t} \bar a_{n,t} \bar a_{n,t}^\top` and
  :math:`G = \frac{1}{N T} \sum_{n,t} \hat g_{n,t} \hat g_{n,t}^\top` with
  :math:`\hat g = c\, g`, so that the Fisher block is approximately :math:`A \otimes G`
  (``vec`` taken column-wise on :math:`\nabla_W` of shape ``(out, in + 1)``).

Usage::

    with LayerStatistics(model, params) as stats:      # hooks live inside the block
        outputs = model(x)
        loss = loss_fn(outputs, y)
        grads = torch.autograd.grad(loss, params + [outputs])   # ONE backward pass
    scale = per_sample_scale(loss_fn, outputs.detach(), y, grads[-1])
    squares = stats.grad_squares(scale)        # {parameter: sum_n (grad_n)^2}
    A, G = stats.layers[0].kronecker_factors(scale)

Only the first backward pass inside the block is recorded (later passes, e.g.
curvature products through the same graph, are ignored).  Parameters that are not
the ``weight`` / ``bias`` of a supported layer (``nn.Linear``; ``nn.Conv2d`` with
``groups=1``, numeric padding and ``padding_mode="zeros"``), that belong to a layer
called more than once per forward (weight sharing), or that are shared between
modules are listed in :attr:`LayerStatistics.fallback`, with one warning naming
their layers (:meth:`LayerStatistics.fallback_layers`); their statistics must come
from elsewhere (e.g. :func:`per_sample_grad_squares`).
Statistics cover the loss terms that flow through the layer outputs: a weight cost
added directly on the parameters is not part of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from hpo2.curvature.batch_norm import batch_norm_in_eval


def _conv_supported(module: nn.Conv2d) -> bool:
    return module.groups == 1 and not isinstance(module.padding, str) and module.padding_mode == "zeros"


def _supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and _conv_supported(module))


@dataclass
class LayerRecord:
    """What one layer saw in the recorded forward/backward pass.

    Attributes:
        name: the module's qualified name in the model.
        module: the ``nn.Linear`` or ``nn.Conv2d``.
        inputs: the layer's input, detached (``(N, ..., in)`` or ``(N, C, H, W)``).
        raw_output_grad: :math:`\\partial L / \\partial s` as autograd delivered it
            (``None`` until the backward pass reached the layer).
        params: the layer's parameters that are recorded (optimized); a bias left out
            (frozen, or not given to the optimizer) gets no homogeneous coordinate.
    """

    name: str
    module: nn.Module
    inputs: Tensor
    raw_output_grad: Tensor | None = None
    params: list[Tensor] = field(default_factory=list)

    @property
    def has_bias(self) -> bool:
        """Whether the layer's bias is among the recorded :attr:`params` (then :math:`\\bar a`
        carries the 1 and matrices are ``(out, in + 1)``)."""
        bias = getattr(self.module, "bias", None)
        return bias is not None and any(p is bias for p in self.params)

    def activations(self) -> Tensor:
        r"""Homogeneous activations :math:`\bar a`, shape ``(N, T, in [+ 1])``: a
        trailing column of ones when the layer has a bias; conv inputs as unfolded
        patches (``in = C_in * kh * kw``, ``T`` output positions)."""
        a = self.inputs
        if isinstance(self.module, nn.Conv2d):
            m = self.module
            assert not isinstance(m.padding, str), "_conv_supported admits numeric padding only"
            a = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride).transpose(1, 2)
        else:
            a = a.reshape(a.shape[0], -1, a.shape[-1])
        if self.has_bias:
            a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
        return a

    def output_grads(self, scale: Tensor | float = 1.0) -> Tensor:
        r"""Per-sample output gradients :math:`\hat g_{n,t} = c_n\, g_{n,t}`, shape ``(N, T, out)``."""
        if self.raw_output_grad is None:
            raise RuntimeError(
                f"layer {self.name!r}: no output gradient recorded (run one backward pass inside the block)"
            )
        g = self.raw_output_grad
        g = (
            g.flatten(2).transpose(1, 2)
            if isinstance(self.module, nn.Conv2d)
            else g.reshape(g.shape[0], -1, g.shape[-1])
        )
        scale_t = torch.as_tensor(scale, dtype=g.dtype, device=g.device)
        return g * (scale_t.reshape(-1, 1, 1) if scale_t.dim() == 1 else scale_t)

    def grad_squares(self, scale: Tensor | float = 1.0) -> Tensor:
        r""":math:`\sum_n (c_n \sum_t g_{n,t} \bar a_{n,t}^\top)^{\odot 2}`, shape ``(out, in [+ 1])``."""
        a = self.activations()
        g = self.output_grads(scale)
        if a.shape[1] == 1:  # one position: the square of an outer product is the outer product of squares
            return torch.einsum("no,ni->oi", g[:, 0] ** 2, a[:, 0] ** 2)
        return (torch.einsum("nto,nti->noi", g, a) ** 2).sum(0)

    def kronecker_factors(self, scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
        r"""K-FAC's :math:`(A, G)`: :math:`A = \frac1N\sum_{n,t}\bar a\bar a^\top`
        (``(in [+ 1])²``) and :math:`G = \frac1{NT}\sum_{n,t}\hat g\hat g^\top` (``out²``)."""
        a = self.activations().flatten(0, 1)
        g = self.output_grads(scale)
        n, t = g.shape[0], g.shape[1]
        g = g.flatten(0, 1)
        return a.T @ a / n, g.T @ g / (n * t)

    def split(self, matrix: Tensor) -> dict[Tensor, Tensor]:
        """Split a ``(out, in [+ 1])`` matrix into the layer's parameters' shapes."""
        weight, bias = self.module.weight, self.module.bias
        assert isinstance(weight, Tensor), "a Linear or Conv2d layer's weight"
        parts = {weight: (matrix[:, :-1] if self.has_bias else matrix).reshape(weight.shape)}
        if self.has_bias:
            assert isinstance(bias, Tensor), "has_bias"
            parts[bias] = matrix[:, -1]
        return parts


class LayerStatistics:
    """Record each supported layer's input and output gradient during one
    forward/backward pass (a context manager; see the module docstring).

    Args:
        model: the network.
        params: the parameters of interest (default: all of ``model``'s that require
            grad); every one not owned by a supported layer goes to :attr:`fallback`.
        warn: warn once per object, naming the layers that fall back, when there are any.
        who: the user of the statistics, named in the warning (e.g. ``"KFAC"``).
        fallback: what the fallback parameters get instead, named in the warning.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[Tensor] | None = None,
        *,
        warn: bool = True,
        who: str = "LayerStatistics",
        fallback: str = "the fallback",
    ) -> None:
        self.model = model
        self._who, self._fallback_use = who, fallback
        self.params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
        wanted = self._wanted = {id(p) for p in self.params}
        owners: dict[int, list[str]] = {}
        for name, module in model.named_modules():
            for p in module.parameters(recurse=False):
                owners.setdefault(id(p), []).append(name)
        self._modules: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in wanted]
            if own and _supported(module) and all(len(owners[id(p)]) == 1 for p in own):
                self._modules[name] = module
        covered = {id(p) for m in self._modules.values() for p in m.parameters(recurse=False)}
        names = {id(p): n for n, p in model.named_parameters()}
        self.fallback: list[str] = [
            names.get(id(p), f"<param {i}>") for i, p in enumerate(self.params) if id(p) not in covered
        ]
        self.layers: list[LayerRecord] = []
        self._calls: dict[str, int] = {}
        self._handles: list[RemovableHandle] = []
        self._recording = False
        self._warn = warn
        self._reused: set[str] = set()

    def __enter__(self) -> LayerStatistics:
        self.layers, self._calls, self._recording = [], {}, True
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._recording = False
        for handle in self._handles:
            handle.remove()
        self._handles = []
        reused = [name for name, count in self._calls.items() if count > 1]
        if reused:
            self._reused.update(reused)
            shared = {id(p) for name in reused for p in self._modules[name].parameters(recurse=False)}
            names = {id(p): n for n, p in self.model.named_parameters()}
            self.fallback += [names[i] for i in shared if names[i] not in self.fallback]
            self.layers = [r for r in self.layers if r.name not in reused]
        if self.fallback and self._warn and kind is None:
            layers = self.fallback_layers()
            warnings.warn(
                f"{self._who}: no per-layer statistics for {len(layers)} layer(s): {', '.join(layers)} "
                "(only nn.Linear and nn.Conv2d called once per forward have them); "
                f"their parameters use {self._fallback_use}",
                stacklevel=2,
            )
            self._warn = False  # once per LayerStatistics object

    def fallback_layers(self) -> list[str]:
        """The modules that own the :attr:`fallback` parameters, each once, as
        ``"name (Type)"`` (``<model>`` for the model's own parameters)."""
        described: list[str] = []
        for param_name in self.fallback:
            owner, dot, _ = param_name.rpartition(".")
            if param_name.startswith("<param"):
                label = param_name
            else:
                module = self.model.get_submodule(owner) if dot else self.model
                again = ", called more than once per forward" if owner in self._reused else ""
                label = f"{owner or '<model>'} ({type(module).__name__}{again})"
            if label not in described:
                described.append(label)
        return described

    def _forward_hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not self._recording:
                return
            self._calls[name] = self._calls.get(name, 0) + 1
            record = LayerRecord(name=name, module=module, inputs=inputs[0].detach(),
                                 params=[p for p in module.parameters(recurse=False) if id(p) in self._wanted])
            self.layers.append(record)
            if output.requires_grad:
                def grad_hook(grad: Tensor) -> None:
                    if self._recording and record.raw_output_grad is None:
                        record.raw_output_grad = grad.detach()
                output.register_hook(grad_hook)

        return hook

    def grad_squares(self, scale: Tensor | float = 1.0) -> dict[Tensor, Tensor]:
        r""":math:`\sum_n (\nabla_\theta \ell_n)^{\odot 2}` for every covered parameter
        (keyed by the parameter tensor), from the recorded pass."""
        out: dict[Tensor, Tensor] = {}
        for record in self.layers:
            out.update(record.split(record.grad_squares(scale)))
        return out


def per_sample_scale(
    loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor, output_grad: Tensor
) -> Tensor:
    r"""The factors :math:`c_n` with :math:`\nabla \ell_n = c_n \nabla_{z_n} L`, shape ``(N,)``.

    :math:`\ell_n` is ``loss_fn`` on sample :math:`n` alone and :math:`L` the loss on
    the batch; ``output_grad`` is :math:`\partial L / \partial z` (from the same
    backward pass).  The scale is read off the loss itself, so it is right for any
    reduction, class weights (:math:`c_n = \sum_m w_{y_m} / w_{y_n}`) and
    ``ignore_index`` (:math:`c_n = 0`): with ``torch.func.vmap`` over the loss alone
    (no network), :math:`c_n = \langle \nabla\ell_n, \nabla_{z_n} L\rangle / \lVert
    \nabla_{z_n} L \rVert^2`, 0 where the batch gradient vanishes.  Cost: one
    gradient of the loss on the outputs per sample, negligible beside the network.
    """
    known = _closed_form_scale(getattr(loss_fn, "output_loss", loss_fn), outputs, targets)
    if known is not None:
        return known
    z = outputs.detach()

    def single(zn: Tensor, yn: Tensor) -> Tensor:
        return loss_fn(zn.unsqueeze(0), yn.unsqueeze(0))

    with torch.enable_grad():
        per_sample = torch.func.vmap(torch.func.grad(single))(z, targets)
    batch = output_grad.detach().reshape(z.shape[0], -1)
    own = per_sample.reshape(z.shape[0], -1)
    norm2 = (batch * batch).sum(1)
    return torch.where(
        norm2 > 0, (own * batch).sum(1) / norm2.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(norm2)
    )


def _closed_form_scale(loss_fn: object, outputs: Tensor, targets: Tensor) -> Tensor | None:
    r""":func:`per_sample_scale` without vmap for the common losses (``None`` for others):
    ``reduction="sum"``: 1; ``"mean"`` of ``nn.MSELoss`` / ``nn.BCEWithLogitsLoss``: N;
    of ``nn.CrossEntropyLoss`` with class-index targets, one per sample:
    :math:`\sum_m w_{y_m} / w_{y_n}` over the non-ignored samples, 0 for ignored ones."""
    n = outputs.shape[0]
    ones = torch.ones(n, dtype=outputs.dtype, device=outputs.device)
    reduction = getattr(loss_fn, "reduction", None)
    supported = isinstance(loss_fn, nn.MSELoss | nn.BCEWithLogitsLoss | nn.CrossEntropyLoss)
    if not supported or reduction not in ("mean", "sum"):
        return None
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if targets.dtype not in (torch.int64, torch.int32) or targets.shape != (n,):
            return (
                None if loss_fn.weight is not None or outputs.dim() != 2 else (ones if reduction == "sum" else ones * n)
            )
        valid = (targets != loss_fn.ignore_index).to(outputs.dtype)
        if reduction == "sum":
            return valid
        w = (
            valid
            if loss_fn.weight is None
            else loss_fn.weight.to(outputs.dtype)[targets.clamp_min(0) * valid.long()] * valid
        )
        return torch.where(w > 0, w.sum() / w.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))
    return ones if reduction == "sum" else ones * n


def per_sample_grad_squares(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[Tensor],
    weights: Tensor | None = None,
    chunk: int = 64,
) -> list[Tensor]:
    r""":math:`\sum_n w_n (\nabla_\theta \ell_n)^{\odot 2}` (``weights`` :math:`w`, default 1)
    for ``params`` by ``torch.func.vmap`` over samples (one forward/backward per
    sample, batched): the general path for parameters :class:`LayerStatistics` does
    not cover.  Costs several gradients' time (about 24 on the benchmark MLP);
    chunks bound the ``N x P`` memory."""
    wanted = {id(p) for p in params}
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n: p.detach() for n, p in model.named_parameters() if id(p) in wanted}
    frozen = {n: p.detach() for n, p in model.named_parameters() if id(p) not in wanted}
    buffers = dict(model.named_buffers())

    def sample_loss(ps: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = torch.func.functional_call(model, {**buffers, **frozen, **ps}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0), randomness="different")
    total = {n: torch.zeros_like(t) for n, t in trainable.items()}
    for start in range(0, inputs.shape[0], chunk):
        with batch_norm_in_eval(model):
            grads = per_sample(trainable, inputs[start : start + chunk], targets[start : start + chunk])
        for n in total:
            squares = grads[n] ** 2
            if weights is not None:
                squares = squares * weights[start : start + chunk].reshape((-1,) + (1,) * (squares.dim() - 1))
            total[n] += squares.sum(0)
    return [total[names[id(p)]] for p in params]
