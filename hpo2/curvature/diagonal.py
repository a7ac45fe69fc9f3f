r"""Stochastic estimators of a curvature matrix's diagonal.

* **Hutchinson** (Bekas, Kokiopoulou & Saad 2007; used by AdaHessian, Yao et al.
  2021, eq. 7): with Rademacher probes :math:`z` (entries :math:`\pm 1` with
  probability 1/2), :math:`\mathbb E[z \odot Cz] = \mathrm{diag}(C)`.  The estimate
  averages ``n_probes`` probes.
* **Gauss-Newton-Bartlett** (Sophia, Liu et al. 2023, Alg. 2): sample labels
  :math:`\hat y \sim p(y \mid z)` from the model's own predictive distribution,
  take the gradient :math:`\hat g` of the loss's terms weighted by the square roots
  of their weights in the loss; by Bartlett's second identity
  :math:`\mathbb E[\hat g \odot \hat g] = \mathrm{diag}(G)` for any reduction,
  class weights or ignored targets.  One backward pass per probe, no Hessian
  product at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hpo2.curvature._validate import as_param_list
from hpo2.curvature.products import CurvatureOperator


def rademacher_like(tensors: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
    """Independent Rademacher tensors (entries -1 or +1, each with probability 1/2)."""
    out = []
    for t in tensors:
        bits = torch.randint(
            0, 2, t.shape, generator=generator, device=t.device if generator is None else generator.device
        )
        out.append(bits.to(device=t.device, dtype=t.dtype) * 2 - 1)
    return out


def hutchinson_diagonal(
    operator: CurvatureOperator, n_probes: int = 1, generator: torch.Generator | None = None
) -> list[Tensor]:
    r"""Estimate :math:`\mathrm{diag}(C) \approx \frac1m \sum_{k=1}^m z_k \odot C z_k`.

    Args:
        operator: the curvature matrix (Hessian or GGN operator).
        n_probes: number of Rademacher probes :math:`m` (one product each).
        generator: seeded ``torch.Generator`` for reproducible probes.

    Example:
        With many probes the estimate approaches the diagonal of an explicit Hessian:

        >>> import torch
        >>> from hpo2.curvature import HessianOperator, hutchinson_diagonal
        >>> A = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]], dtype=torch.float64)
        >>> x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        >>> op = HessianOperator(0.5 * x @ A @ x, [x])
        >>> generator = torch.Generator().manual_seed(0)
        >>> estimate = hutchinson_diagonal(op, n_probes=2000, generator=generator)[0]
        >>> torch.allclose(estimate, A.diagonal(), atol=0.1)
        True
    """
    if n_probes < 1:
        raise ValueError(f"n_probes={n_probes} must be >= 1")
    acc = [torch.zeros_like(p) for p in operator.params]
    for _ in range(n_probes):
        z = rademacher_like(operator.params, generator)
        cz = operator.matvec(z)
        for a, zi, czi in zip(acc, z, cz):
            a.add_(zi * czi)
    return [a / n_probes for a in acc]


_GNB_LOSSES = ("cross_entropy", "bce_with_logits", "mse")
_LIKELIHOODS: dict[type, str] = {
    nn.CrossEntropyLoss: "cross_entropy",
    nn.BCEWithLogitsLoss: "bce_with_logits",
    nn.MSELoss: "mse",
}


def likelihood_name(loss_fn: object) -> str | None:
    """The predictive distribution a training loss is the negative log-likelihood of
    (``"cross_entropy"``, ``"bce_with_logits"``, ``"mse"``), or ``None``.  A wrapper
    exposing ``output_loss`` (see ``output_hessian_for``) is looked through."""
    output_loss = getattr(loss_fn, "output_loss", loss_fn)
    return next((name for cls, name in _LIKELIHOODS.items() if isinstance(output_loss, cls)), None)


def supported_likelihoods() -> str:
    """The loss classes :func:`likelihood_name` recognises, for error messages."""
    return ", ".join(t.__name__ for t in _LIKELIHOODS)





def _term_weights(loss: str | nn.Module, outputs: Tensor, targets: Tensor | None) -> tuple[str, Tensor]:
    r"""The loss's name and its weights :math:`\kappa_t` in :math:`L = \sum_t \kappa_t\,
    \mathrm{nll}_t(z_t, y_t)`, one per term (per position for cross-entropy, shaped
    like the targets; per element otherwise), read off the loss module: its
    ``reduction``, class ``weight`` and ``ignore_index`` (cross-entropy) or
    elementwise ``weight`` (binary cross-entropy).  A name means ``reduction="mean"``."""
    module = loss if isinstance(loss, nn.Module) else None
    name = loss if isinstance(loss, str) else likelihood_name(loss)
    if name not in _GNB_LOSSES:
        allowed = ", ".join(_GNB_LOSSES) + ", " + supported_likelihoods()
        raise ValueError(f"loss={loss!r} is not supported by the Gauss-Newton-Bartlett estimator; allowed: {allowed}")
    reduction = getattr(module, "reduction", "mean")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss reduction={reduction!r} is not supported by the Gauss-Newton-Bartlett estimator; allowed: mean, sum"
        )
    z = outputs.detach()
    if name == "cross_entropy":
        shape = z.movedim(1, -1).shape[:-1]
        kappa = torch.ones(shape, dtype=z.dtype, device=z.device)
        if (
            module is not None
            and targets is not None
            and targets.dtype in (torch.int64, torch.int32)
            and targets.shape == shape
        ):
            valid = targets != module.ignore_index
            class_weight = getattr(module, "weight", None)
            if class_weight is not None:
                kappa = class_weight.to(z.dtype)[targets.clamp_min(0) * valid]
            kappa = kappa * valid
    else:
        if name == "bce_with_logits" and module is not None and module.pos_weight is not None:
            raise ValueError(
                "BCEWithLogitsLoss with pos_weight is not supported by the Gauss-Newton-Bartlett estimator"
            )
        weight = getattr(module, "weight", None)
        kappa = torch.ones_like(z) if weight is None else weight.to(z.dtype).expand_as(z).clone()
    if reduction == "mean":
        kappa = kappa / (kappa.sum() if name == "cross_entropy" and module is not None else kappa.numel())
    return name, kappa


def _sampled_loss(outputs: Tensor, name: str, kappa: Tensor, generator: torch.Generator | None) -> Tensor:
    r""":math:`\hat L = \sum_t \sqrt{\kappa_t}\, \mathrm{nll}_t(z_t, \hat y_t)` with labels drawn
    from the model's predictive distribution (on the generator's device: a CPU
    generator serves CUDA models)."""
    z = outputs.detach()
    if generator is not None:
        z = z.to(generator.device)
    root = kappa.sqrt()
    if name == "cross_entropy":
        probs = torch.softmax(z.movedim(1, -1).reshape(-1, z.shape[1]), dim=-1)
        labels = torch.multinomial(probs, 1, generator=generator).view(z.movedim(1, -1).shape[:-1])
        nll = F.cross_entropy(outputs, labels.to(outputs.device), reduction="none")
    elif name == "bce_with_logits":
        labels = torch.bernoulli(torch.sigmoid(z), generator=generator)
        nll = F.binary_cross_entropy_with_logits(outputs, labels.to(outputs.device), reduction="none")
    else:  # mse: (z - y)^2 is the negative log-likelihood of N(z, 1/2) up to constants
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        nll = (outputs - (z + noise / 2**0.5).to(outputs.device)) ** 2
    return (root.to(nll.device) * nll).sum()


def gauss_newton_bartlett_diagonal(
    outputs: Tensor,
    params: Iterable[Tensor],
    loss: str | nn.Module = "cross_entropy",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    retain_graph: bool = False,
    targets: Tensor | None = None,
) -> list[Tensor]:
    r"""Sophia's Gauss-Newton-Bartlett estimate of :math:`\mathrm{diag}(J^\top H_L J)`.

    For a loss :math:`L = \sum_t \kappa_t\, \mathrm{nll}_t` (the weights
    :math:`\kappa` come from the loss's reduction, class weights and
    ``ignore_index``), sample labels :math:`\hat y_t` from the model and take the
    gradient :math:`\hat g` of :math:`\sum_t \sqrt{\kappa_t}\,\mathrm{nll}_t(\hat y_t)`:
    the terms' scores are independent with mean zero and covariance :math:`H_t`
    (Bartlett), so :math:`\mathbb E[\hat g \odot \hat g] = \sum_t \kappa_t
    \mathrm{diag}(J_t^\top H_t J_t)`, the diagonal of the loss's own Gauss-Newton
    matrix, whatever its reduction.

    Args:
        outputs: model outputs (logits for the classification losses) with graph.
        params: parameters the diagonal is taken for.
        loss: the training loss module (``nn.CrossEntropyLoss`` with class dim 1,
            ``nn.BCEWithLogitsLoss`` or ``nn.MSELoss``, any reduction of mean/sum,
            class/element weights, ``ignore_index``), or the name
            ``"cross_entropy"``, ``"bce_with_logits"`` or ``"mse"`` for its unweighted
            mean-reduced form.
        n_probes: label samples averaged (one backward pass each).
        generator: seeded generator for reproducible samples.
        retain_graph: keep the outputs' graph after the last probe (for a further
            backward pass on the same forward).
        targets: the true targets (needed for class weights and ``ignore_index``).

    Example:
        For a linear model and the mean squared error the Gauss-Newton diagonal is
        :math:`\tfrac2N \sum_n x_n^2`; the estimate approaches it:

        >>> import torch
        >>> from hpo2.curvature import gauss_newton_bartlett_diagonal
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(8, 3, dtype=torch.float64)
        >>> w = torch.randn(3, dtype=torch.float64, requires_grad=True)
        >>> generator = torch.Generator().manual_seed(0)
        >>> mse = torch.nn.MSELoss()
        >>> estimate = gauss_newton_bartlett_diagonal(X @ w, [w], mse, n_probes=4000, generator=generator)[0]
        >>> exact = 2 / 8 * (X**2).sum(dim=0)
        >>> bool(((estimate - exact).abs() / exact).max() < 0.1)
        True
    """
    if n_probes < 1:
        raise ValueError(f"n_probes={n_probes} must be >= 1")
    name, kappa = _term_weights(loss, outputs, targets)
    plist = as_param_list(params)
    acc = [torch.zeros_like(p) for p in plist]
    for k in range(n_probes):
        sampled_loss = _sampled_loss(outputs, name, kappa, generator)
        grads = torch.autograd.grad(
            sampled_loss, plist, retain_graph=retain_graph or k < n_probes - 1, allow_unused=True
        )
        for a, g in zip(acc, grads):
            if g is not None:
                a.add_(g * g)
    return [a / n_probes for a in acc]


def sampled_label_loss(outputs: Tensor, loss: str, generator: torch.Generator | None) -> tuple[Tensor, int]:
    """Mean loss on labels drawn from the model's predictive distribution, and the
    number of independent terms that mean is taken over (K-FAC's true Fisher).  Labels
    are drawn on the generator's device (a CPU generator serves CUDA models)."""
    z = outputs.detach()
    shape = z.movedim(1, -1).shape[:-1] if loss == "cross_entropy" else z.shape
    n_terms = shape.numel()
    kappa = torch.full(shape, 1.0 / n_terms, dtype=z.dtype, device=z.device)
    # sum_t sqrt(1/n) nll_t = sqrt(n) * mean_t nll_t
    return _sampled_loss(outputs, loss, kappa, generator) / n_terms**0.5, n_terms
