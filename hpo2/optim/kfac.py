r"""K-FAC (Martens & Grosse, "Optimizing neural networks with Kronecker-factored
approximate curvature", ICML 2015; convolutions: Grosse & Martens, "A
Kronecker-factored approximate Fisher matrix for convolution layers", ICML 2016;
KL-clipping: Ba, Grosse & Martens, "Distributed second-order optimization using
Kronecker-factored approximations", ICLR 2017).

For each ``nn.Linear`` / ``nn.Conv2d`` layer with homogeneous input
:math:`\bar a = [a; 1]` and output gradient :math:`g`, the Fisher block of its
weight matrix :math:`W` (``(out, in [+ 1])``, the bias as the last column; conv
kernels as ``(out, C_in kh kw)`` on unfolded patches; a bias that is frozen or not
given to the optimizer is no column, and :math:`\bar a = a`) is approximated by
:math:`A \otimes G`, with :math:`A = \mathbb E[\bar a \bar a^\top]` and
:math:`G = \mathbb E[g g^\top]` from :mod:`hpo2.curvature.layers`.  ``g`` comes from
a backward pass of the loss on labels **sampled from the model's predictive
distribution** (``fisher="sampled"``, the true Fisher = the Gauss-Newton matrix in
expectation; one extra backward pass, counted in ``n_grad``), or of the training
loss itself (``fisher="empirical"``).  For losses that average over :math:`D`
outputs per sample (MSE, BCE) the sampled :math:`G` is scaled so that its
expectation is the Gauss-Newton block, not :math:`1/D` of it.

Every ``cov_update_every`` steps the factors take the new batch's statistics as an
exponential moving average (``stat_decay``); every ``inverse_update_every`` steps
they are eigendecomposed, :math:`A = Q_A \Lambda_A Q_A^\top`,
:math:`G = Q_G \Lambda_G Q_G^\top` (in the factors' dtype, retried in float64 when
that fails or is inaccurate: :func:`~hpo2.optim.inverse_roots.checked_eigh`), and the
damped inverses are kept.  The preconditioned gradient uses **factored Tikhonov
damping with the π correction** (Martens & Grosse 2015, sec. 6.3):

.. math::
   V = (G + \tfrac{\sqrt\gamma}{\pi} I)^{-1}\, \nabla_W\, (A + \pi\sqrt\gamma I)^{-1}
     = \big((A + \pi\sqrt\gamma I) \otimes (G + \tfrac{\sqrt\gamma}{\pi} I)\big)^{-1} \nabla_W,
   \qquad \pi = \sqrt{\frac{\mathrm{tr}(A)/\dim A}{\mathrm{tr}(G)/\dim G}},

with :math:`(G + d I)^{-1} = Q_G (\Lambda_G + d I)^{-1} Q_G^\top` formed at the refresh,
so a step costs two products per layer, not the four of rotating into the
eigenbases and back
(:math:`\gamma` = ``damping`` + ``weight_decay``: the L2 term's own curvature :math:`\eta I` is
part of the matrix, as in M&G's :math:`\gamma = \sqrt{\lambda + \eta}` (sec. 6.6); without it a
decay larger than the damping would be amplified up to :math:`\eta / \gamma` in the directions
the Fisher leaves flat; ``weight_decay`` :math:`\eta` is added to :math:`\nabla_W` first).
**KL-clipping** (Ba et al. 2017, sec. 5) scales every :math:`V` by
:math:`\nu = \min(1, \sqrt{\kappa / (\eta^2 \sum_\ell \langle V_\ell, \nabla_\ell \rangle)})`
(:math:`\kappa` = ``kl_clip``; 0 turns it off), then heavy-ball momentum:
:math:`b \leftarrow \mu b + \nu V`, :math:`W \leftarrow W - \eta b`.

``step_rule="quadratic_model"`` replaces ``lr``, ``momentum`` and the KL-clip by
Martens & Grosse's own rule (2015, sec. 7 and 6.5): with the proposal
:math:`\Delta = -V` and the previous update :math:`\delta_0`, the update
:math:`\delta = \alpha\Delta + \mu\delta_0` minimizes the quadratic model
:math:`M(\delta) = \tfrac12 \delta^\top (F + (\lambda + \eta_{wd}) I)\,\delta + \nabla h^\top \delta`
with the **exact** Fisher (Gauss-Newton) :math:`F` of the batch over :math:`(\alpha, \mu)`:

.. math::
   \begin{pmatrix} \alpha \\ \mu \end{pmatrix} = -
   \begin{pmatrix} \Delta^\top F \Delta + \bar\lambda \|\Delta\|^2 &
                    \Delta^\top F \delta_0 + \bar\lambda \Delta^\top\delta_0 \\
                    \cdot & \delta_0^\top F \delta_0 + \bar\lambda \|\delta_0\|^2 \end{pmatrix}^{-1}
   \begin{pmatrix} \nabla h^\top \Delta \\ \nabla h^\top \delta_0 \end{pmatrix},
   \qquad \bar\lambda = \lambda + \eta_{wd}

(:math:`\mu = 0` on the first step).  The products :math:`J\Delta`, :math:`J\delta_0` cost
about three gradients (one forward, the retained backward, two Jacobian-vector products),
charged at their measured time.  Every :data:`LM_INTERVAL` steps the batch loss at
:math:`\theta + \delta` gives :math:`\rho = (h(\theta + \delta) - h(\theta)) / M_0(\delta)`
against the model without :math:`\lambda` (the damping belongs to the solve, not the model;
Martens 2010 sec. 4.1), and Levenberg-Marquardt adapts :math:`\lambda` (``damping``'s start
value): :math:`\lambda \cdot \omega` when :math:`\rho > 3/4`, :math:`\lambda / \omega` when
:math:`\rho < 1/4`, :math:`\omega = (19/20)^{5}`.  The factors' Tikhonov term at the next
inversion uses :math:`\bar\lambda`.

Parameters K-FAC cannot factor (``nn.LayerNorm`` / BatchNorm scales and shifts,
``nn.Embedding`` tables, weight-shared layers: any parameter
:class:`~hpo2.curvature.layers.LayerStatistics` lists as fallback) are stepped by
**Adam** with ``adam_lr``; one warning per optimizer names their layers.  Defaults are
those of kfac-pytorch (Pauloski et al. 2020) / Ba et al.'s ImageNet runs.
The closure must be a :class:`~hpo2.optim.closure.BatchClosure`; the training loss
should use ``reduction="mean"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.optim.optimizer import ParamsT

from hpo2.curvature import GGNOperator, grads_or_zeros, output_hessian_for
from hpo2.curvature.diagonal import likelihood_name, sampled_label_loss, supported_likelihoods
from hpo2.curvature.layers import LayerRecord, LayerStatistics, per_sample_scale
from hpo2.optim.base import Closure
from hpo2.optim.closure import BatchClosure, require_batch_closure
from hpo2.optim.costs import device_clock
from hpo2.optim.inverse_roots import checked_eigh, damped_inverse
from hpo2.optim.matrix_base import charge_overhead
from hpo2.optim.moments import adam_step_
from hpo2.optim.seeded import SeededOptimizer
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings, document_settings
from hpo2.solvers import host_floats, levenberg_marquardt

LM_INTERVAL = 5
"""Steps between two reduction-ratio checks of ``step_rule="quadratic_model"`` (M&G 2015: T_2 = 5)."""
LM_OMEGA = (19 / 20) ** LM_INTERVAL
"""Levenberg-Marquardt factor on the damping per check (M&G 2015 sec. 6.5)."""


class KFACSettings(OptimizerSettings):
    """Settings of :class:`KFAC` (kfac-pytorch / Ba et al. 2017 defaults)."""

    family: ClassVar[str] = "Kronecker-factored"
    reference: ClassVar[str] = "Martens & Grosse, ICML 2015; Grosse & Martens, ICML 2016; Ba et al., ICLR 2017"

    lr: Annotated[float, Field(gt=0), FloatRange(1e-3, 1.0, log=True)] = 0.1
    """Learning rate eta of the preconditioned, KL-clipped step."""
    momentum: Annotated[float, Field(ge=0, lt=1), FloatRange(0.0, 0.99)] = 0.9
    """Heavy-ball momentum mu on the preconditioned step."""
    damping: Annotated[float, Field(gt=0), FloatRange(1e-5, 1.0, log=True)] = 1e-3
    """Tikhonov damping gamma, split between the factors by the pi correction (sec. 6.3)."""
    stat_decay: Annotated[float, Field(ge=0, lt=1), FloatRange(0.8, 0.999)] = 0.95
    """Decay of the Kronecker factors' exponential moving average."""
    kl_clip: Annotated[float, Field(ge=0), FloatRange(1e-4, 0.1, log=True)] = 1e-3
    """KL-clipping bound kappa on the step's predicted change (Ba et al. 2017 sec. 5); 0 turns it off."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """L2 weight decay added to the gradient before preconditioning."""
    cov_update_every: Annotated[int, Field(ge=1), IntRange(1, 50, log=True)] = 10
    """Update the Kronecker factors every this many steps."""
    inverse_update_every: Annotated[int, Field(ge=1), IntRange(1, 200, log=True)] = 100
    """Eigendecompose the factors every this many steps."""
    fisher: Annotated[Literal["sampled", "empirical"], Choice(("sampled", "empirical"))] = "sampled"
    """Output gradients from labels sampled from the model ('sampled', true Fisher) or the data's."""
    adam_lr: Annotated[float, Field(gt=0), FloatRange(1e-5, 1e-1, log=True)] = 1e-3
    """Adam learning rate for the parameters K-FAC cannot factor."""
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """Adam beta1 for the parameters K-FAC cannot factor."""
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    """Adam beta2 for the parameters K-FAC cannot factor."""
    adam_eps: Annotated[float, Field(gt=0)] = 1e-8
    """Adam epsilon for the parameters K-FAC cannot factor."""
    step_rule: Literal["lr", "quadratic_model"] = "lr"
    """'lr': lr, momentum, KL-clip; 'quadratic_model': step, momentum, damping from the Fisher model (M&G sec. 7)."""
    seed: int = 0
    """Seed of the label-sampling generator (saved with the optimizer state)."""

    renamed: ClassVar[dict[str, str]] = {
        "fallback_lr": "adam_lr", "fallback_beta1": "adam_beta1", "fallback_beta2": "adam_beta2",
        "fallback_eps": "adam_eps",
    }


def _weight_matrix(weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W | b]`` as ``(out, in [+ 1])`` (conv kernels flattened like unfolded patches)."""
    w = weight.reshape(weight.shape[0], -1)
    return torch.cat([w, bias.reshape(-1, 1)], dim=1) if bias is not None else w


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """The inner product of two parameter-shaped lists, as a 0-d tensor."""
    return torch.stack([(x * y).sum() for x, y in zip(xs, ys)]).sum()


def quadratic_model_step(
    fisher: Tensor, gram: Tensor, slopes: Tensor, damping: float, weight_decay: float
) -> tuple[Tensor, Tensor]:
    r"""Martens & Grosse (2015, sec. 7): the coefficients :math:`c` of the update
    :math:`\delta = \sum_i c_i v_i` in the span of :math:`k \le 2` vectors that minimize the
    damped model, :math:`c = -(V^\top F V + (\lambda + \eta) V^\top V)^{+} V^\top \nabla h`,
    and the model's change without :math:`\lambda`,
    :math:`M_0(\delta) - M_0(0) = c^\top V^\top \nabla h + \tfrac12 c^\top (V^\top F V + \eta V^\top V) c`.

    Args:
        fisher: :math:`V^\top F V` (``k x k``); gram: :math:`V^\top V`; slopes: :math:`V^\top \nabla h`.
        damping: :math:`\lambda`; weight_decay: :math:`\eta`.
    """
    damped = fisher + (damping + weight_decay) * gram
    coefficients = -(torch.linalg.pinv(damped, hermitian=True) @ slopes)
    change = slopes @ coefficients + 0.5 * coefficients @ (fisher + weight_decay * gram) @ coefficients
    return coefficients, change


@document_settings
class KFAC(SeededOptimizer):
    """K-FAC as a ``torch.optim.Optimizer`` (one parameter group); see the module docstring.

    Diagnostics per step: ``damping``, ``cov_updated`` / ``inverse_updated`` (0/1)
    and their running counts ``cov_updates`` / ``inverse_updates``,
    ``inverse_failures``, ``inverse_seconds``, ``condition_number`` (largest over the
    damped factors, from the last eigendecomposition), ``kl_scale`` (ν),
    ``kfac_layers`` and ``fallback_params``.

    Example:
        Twenty steps halve a softmax regression's loss:

        >>> import torch
        >>> from hpo2.optim import KFAC, BatchClosure
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> x = torch.randn(128, 4)
        >>> y = (x @ torch.randn(4, 3)).argmax(dim=1)
        >>> closure = BatchClosure(model, torch.nn.CrossEntropyLoss(), x, y)
        >>> opt = KFAC(model.parameters(), lr=0.3)
        >>> losses = [float(opt.step(closure)) for _ in range(20)]
        >>> losses[-1] < 0.5 * losses[0]
        True
    """

    Settings = KFACSettings

    def __init__(
        self,
        params: ParamsT,
        *,
        lr: float = 0.1,
        momentum: float = 0.9,
        damping: float = 1e-3,
        stat_decay: float = 0.95,
        kl_clip: float = 1e-3,
        weight_decay: float = 0.0,
        cov_update_every: int = 10,
        inverse_update_every: int = 100,
        fisher: Literal["sampled", "empirical"] = "sampled",
        adam_lr: float = 1e-3,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        adam_eps: float = 1e-8,
        step_rule: Literal["lr", "quadratic_model"] = "lr",
        seed: int = 0,
        raise_on_nonfinite: bool = False,
    ) -> None:
        settings = dict(
            lr=lr, momentum=momentum, damping=damping, stat_decay=stat_decay, kl_clip=kl_clip,
            weight_decay=weight_decay, cov_update_every=cov_update_every, inverse_update_every=inverse_update_every,
            fisher=fisher, adam_lr=adam_lr, adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_eps=adam_eps,
            step_rule=step_rule, seed=seed
        )
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)
        self._statistics: LayerStatistics | None = None

    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]  # closures return a Tensor
        group, state = self.param_groups[0], self.global_state
        t = int(state.get("global_step", 0)) + 1
        update_cov = (t - 1) % group["cov_update_every"] == 0
        update_inverse = (t - 1) % group["inverse_update_every"] == 0
        quadratic = group["step_rule"] == "quadratic_model"
        damping = float(state.get("damping", group["damping"])) if quadratic else group["damping"]
        self._start_diagnostics(
            damping=damping, cov_updated=int(update_cov), inverse_updated=0, inverse_seconds=0.0
        )
        batch = require_batch_closure(closure, type(self).__name__, "per-layer statistics and sampled labels")
        started = time.perf_counter()
        loss_t, grads, records, scale = self._forward_backward(batch, update_cov, group["fisher"])
        g_norm_t = torch.sqrt(torch.stack([(g.double() ** 2).sum() for g in grads]).sum())
        loss, g_norm = host_floats(loss_t, g_norm_t)  # also waits for the backward: timed with it
        grad_seconds = (time.perf_counter() - started) / int(self.diagnostics["n_grad"])
        self.diagnostics.update(loss=loss, grad_norm=g_norm)
        if not self._check_finite(loss, g_norm):
            self._finish_diagnostics()
            return loss_t
        self._store_grads(grads)
        device = self._params[0].device
        started = device_clock(device)
        with torch.no_grad():
            for record in records:
                self._accumulate(record, scale, group["stat_decay"])
            layers = self._layers()
            if update_inverse or any("inverse_A" not in self.state[w] for w, _ in layers):
                self._invert(layers, damping + group["weight_decay"])
            state["global_step"] = t
            state["cov_updates"] = int(state.get("cov_updates", 0)) + int(update_cov)
            self._apply(group, layers, batch if quadratic else None, loss)
        self.diagnostics.update(cov_updates=state["cov_updates"], inverse_updates=int(state.get("inverse_updates", 0)),
                                inverse_failures=int(state.get("inverse_failures", 0)),
                                condition_number=float(state.get("condition_number", math.nan)))
        self._finish_diagnostics()
        charge_overhead(self, grad_seconds, device_clock(device) - started)
        return loss_t

    # -- statistics
    def _forward_backward(
        self, batch: BatchClosure, record: bool, fisher: str
    ) -> tuple[Tensor, list[Tensor], list[LayerRecord], Tensor | float]:
        """Loss (detached) and gradient; when ``record``, also the layers' statistics from the
        sampled-label backward pass (first, so the hooks record it) or the loss's own."""
        for p in self._params:
            p.grad = None
        if not record:
            with torch.enable_grad():
                evaluation = batch.evaluate()
                found: Sequence[Tensor] = torch.autograd.grad(evaluation.loss, self._params, allow_unused=True)
            self._count("n_grad")
            return evaluation.loss.detach(), grads_or_zeros(found, self._params), [], 1.0
        if self._statistics is None:
            self._statistics = LayerStatistics(
                batch.model, self._params, who="KFAC", fallback="Adam with adam_lr (no Kronecker factors)"
            )
        with torch.enable_grad(), self._statistics as stats:
            evaluation = batch.evaluate()
            outputs = evaluation.output_tensor(type(self).__name__, "its Kronecker factors")
            if fisher == "sampled":
                name = likelihood_name(batch.loss_fn)
                if name is None:
                    raise ValueError(
                        f"{type(self).__name__}: fisher='sampled' needs the loss to be one of "
                        f"{supported_likelihoods()}, "
                        f"got {type(batch.loss_fn).__name__}; use fisher='empirical' for other losses"
                    )
                sampled, n_terms = sampled_label_loss(outputs, name, self._generator)
                torch.autograd.grad(sampled, self._params, retain_graph=True, allow_unused=True)
                self._count("n_grad")
                # G's expectation must be the Gauss-Newton block of the per-sample loss:
                # scale^2 = N * n_terms (= N^2 for cross-entropy, N^2 D for a mean over D outputs).
                scale: Tensor | float = math.sqrt(outputs.shape[0] * n_terms)
                found = torch.autograd.grad(evaluation.loss, self._params, allow_unused=True)
            else:
                *found, output_grad = torch.autograd.grad(evaluation.loss, [*self._params, outputs], allow_unused=True)
                scale = per_sample_scale(batch.loss_fn, outputs.detach(), evaluation.targets, output_grad)
        self._count("n_grad")
        records = [r for r in stats.layers if r.raw_output_grad is not None]
        return evaluation.loss.detach(), grads_or_zeros(found, self._params), records, scale

    def _accumulate(self, record: LayerRecord, scale: Tensor | float, decay: float) -> None:
        """EMA of the layer's factors, kept in its weight's state (with its bias's index)."""
        module = record.module
        weight = module.weight
        assert isinstance(weight, Tensor), "a Linear or Conv2d layer's weight"
        if not any(p is weight for p in record.params):
            return  # a weight not optimized: no block (the layer's bias, if optimized, takes the fallback)
        a_new, g_new = record.kronecker_factors(scale)
        st = self.state[weight]
        if "A" not in st:
            st["A"], st["G"] = a_new.clone(), g_new.clone()
            st["bias_index"] = next((i for i, p in enumerate(self._params) if p is module.bias), -1)
        else:
            st["A"].mul_(decay).add_(a_new, alpha=1 - decay)
            st["G"].mul_(decay).add_(g_new, alpha=1 - decay)

    def _layers(self) -> list[tuple[Tensor, Tensor | None]]:
        """(weight, bias) of every layer that has factors."""
        return [
            (p, self._params[self.state[p]["bias_index"]] if self.state[p]["bias_index"] >= 0 else None)
            for p in self._params
            if "A" in self.state[p]
        ]

    # -- inverses
    def _invert(self, layers: list[tuple[Tensor, Tensor | None]], damping: float) -> None:
        device = self._params[0].device
        started = device_clock(device)
        state, condition = self.global_state, 0.0
        for weight, _ in layers:
            st = self.state[weight]
            found_a, found_g = checked_eigh(st["A"]), checked_eigh(st["G"])
            if found_a is None or found_g is None:
                state["inverse_failures"] = int(state.get("inverse_failures", 0)) + 1
                continue
            (values_a, vectors_a, _), (values_g, vectors_g, _) = found_a, found_g
            values_a, values_g = values_a.clamp_min(0.0), values_g.clamp_min(0.0)
            trace_per_dim_a, trace_per_dim_g = float(values_a.mean()), float(values_g.mean())  # mean eigenvalues
            pi = math.sqrt(trace_per_dim_a / trace_per_dim_g) if trace_per_dim_a > 0 and trace_per_dim_g > 0 else 1.0
            root = math.sqrt(damping)
            st["inverse_A"] = damped_inverse(values_a, vectors_a, pi * root).to(st["A"].dtype)
            st["inverse_G"] = damped_inverse(values_g, vectors_g, root / pi).to(st["G"].dtype)
            st["pi"] = pi
            for values, shift in ((values_a, pi * root), (values_g, root / pi)):
                condition = max(condition, float((values.max() + shift) / (values.min() + shift)))
        state["inverse_updates"] = int(state.get("inverse_updates", 0)) + 1
        state["condition_number"] = condition
        self.diagnostics["inverse_updated"] = 1
        self.diagnostics["inverse_seconds"] = device_clock(device) - started

    # -- the update
    def _apply(
        self, group: dict[str, Any], layers: list[tuple[Tensor, Tensor | None]], batch: BatchClosure | None, loss: float
    ) -> None:
        """Precondition every factored layer's gradient; step by lr, KL-clip and momentum, or, with
        ``batch``, by the quadratic model on it; the fallback parameters by Adam."""
        lr, wd = group["lr"], group["weight_decay"]
        directions: list[tuple[Tensor, Tensor | None, Tensor]] = []
        vg_terms: list[Tensor] = []
        for weight, bias in layers:
            st = self.state[weight]
            grad = _weight_matrix(weight.grad, bias.grad if bias is not None else None)  # type: ignore[arg-type]  # grads stored above
            if wd:
                grad = grad + wd * _weight_matrix(weight, bias)
            v = st["inverse_G"] @ grad @ st["inverse_A"]
            vg_terms.append((v * grad).sum())
            directions.append((weight, bias, v))
        steps: list[tuple[Tensor, Tensor]] = []
        for weight, bias, v in directions:
            steps.append((weight, v[:, : v.shape[1] - (bias is not None)].reshape(weight.shape)))
            if bias is not None:
                steps.append((bias, v[:, -1]))
        factored = {id(p) for p, _ in steps}
        self.diagnostics["kfac_layers"] = len(layers)
        if batch is not None and steps:
            self._quadratic_model_update(group, steps, batch, loss)
        elif steps:
            (vg,) = host_floats(torch.stack(vg_terms).sum() * lr**2)  # one read for all layers
            nu = min(1.0, math.sqrt(group["kl_clip"] / vg)) if group["kl_clip"] > 0 and vg > 0 else 1.0
            self.diagnostics["kl_scale"] = nu
            for p, d in steps:
                st = self.state[p]
                buf = st.get("momentum_buffer")
                st["momentum_buffer"] = d.mul(nu) if buf is None else buf.mul_(group["momentum"]).add_(d, alpha=nu)
                p.add_(st["momentum_buffer"], alpha=-lr)
        fallback = [p for p in self._params if id(p) not in factored]
        for p in fallback:
            self._adam(p, group)
        self.diagnostics["fallback_params"] = len(fallback)

    def _quadratic_model_update(
        self, group: dict[str, Any], steps: list[tuple[Tensor, Tensor]], batch: BatchClosure, loss: float
    ) -> None:
        """``step_rule="quadratic_model"`` (module docstring): alpha and mu from the exact-Fisher
        model on ``batch`` (M&G 2015 sec. 7), every LM_INTERVAL steps the damping by the
        reduction ratio (sec. 6.5)."""
        state, wd = self.global_state, group["weight_decay"]
        damping = float(state.get("damping", group["damping"]))
        params = [p for p, _ in steps]
        grads: list[Tensor] = [p.grad + wd * p if wd else p.grad for p in params]  # type: ignore[misc]  # grads stored above
        previous = [d for p in params if (d := self.state[p].get("previous_update")) is not None]
        vectors = [[-v for _, v in steps]]
        if len(previous) == len(params):  # not on the first step
            vectors.append(previous)
        with torch.enable_grad():
            evaluation = batch.evaluate()
            outputs = evaluation.output_tensor(type(self).__name__, "the Fisher products of its quadratic model")
            operator = GGNOperator(outputs, params, output_hessian_for(batch.loss_fn, outputs, evaluation.targets))
            jv = [operator.jvp(v).detach() for v in vectors]
        h_jv = [operator.output_hessian(j) for j in jv]
        fisher = torch.stack([torch.stack([(a * b).sum() for b in h_jv]) for a in jv]).double()
        gram = torch.stack([torch.stack([_dot(a, b) for b in vectors]) for a in vectors]).double()
        slopes = torch.stack([_dot(grads, v) for v in vectors]).double()
        coefficients_t, change_t = quadratic_model_step(fisher, gram, slopes, damping, wd)
        *coefficients, change = host_floats(*coefficients_t.unbind(), change_t)  # one read
        alpha, mu = coefficients[0], coefficients[1] if len(coefficients) > 1 else 0.0
        squares_before = _dot(params, params) if wd else None
        for i, p in enumerate(params):
            update = vectors[0][i] * alpha + (vectors[1][i] * mu if len(vectors) > 1 else 0.0)
            self.state[p]["previous_update"] = update
            p.add_(update)
        self.diagnostics.update(alpha=alpha, mu=mu, model_change=change)
        if int(state["global_step"]) % LM_INTERVAL == 0:
            actual_t = batch.loss_value() - loss
            if squares_before is not None:
                actual_t = actual_t + 0.5 * wd * (_dot(params, params) - squares_before)
            (actual,) = host_floats(actual_t)
            rho = actual / change if change < 0 and math.isfinite(actual) else -math.inf
            damping = levenberg_marquardt(damping, rho, 1 / LM_OMEGA, LM_OMEGA)
            state["damping"] = damping
            self._record_ratio(rho, damping)

    def _adam(self, p: Tensor, group: dict[str, Any]) -> None:
        """The fallback for parameters K-FAC does not factor: Adam (:func:`~hpo2.optim.moments.adam_step_`)."""
        st = self.state[p]
        if "exp_avg" not in st:
            st["exp_avg"], st["exp_avg_sq"], st["adam_step"] = torch.zeros_like(p), torch.zeros_like(p), 0
        st["adam_step"] += 1
        grad = p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
        assert grad is not None, "gradients stored before the update"
        adam_step_(p, grad, st["exp_avg"], st["exp_avg_sq"], st["adam_step"], group["adam_lr"], group["adam_beta1"],
                   group["adam_beta2"], group["adam_eps"])
