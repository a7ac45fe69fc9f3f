r"""Stochastic estimators of a curvature matrix's diagonal.

* **Hutchinson** (Bekas, Kokiopoulou & Saad 2007; used by AdaHessian, Yao et al.
  2021, eq. 7): with Rademacher probes :math:`z` (entries :math:`\pm 1` with
  probability 1/2), :math:`\mathbb E[z \odot Cz] = \mathrm{diag}(C)`.  The estimate
  averages ``n_probes`` probes.
* **Gauss-Newton-Bartlett** (Sophia, Liu et al. 2023, Alg. 2): sample labels
  :math:`\hat y \sim p(y \mid z)` from the model's own predictive distribution,
  take the gradient :math:`\hat g` of the mean loss on them; by Bartlett's second
  identity :math:`\mathbb E[M\, \hat g \odot \hat g] = \mathrm{diag}(G)` where
  :math:`M` is the number of independent terms the loss averages.  One backward
  pass per probe, no Hessian product at all.
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
        bits = torch.randint(0, 2, t.shape, generator=generator, device=t.device if generator is None else generator.device)
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


def sampled_label_loss(outputs: Tensor, loss: str, generator: torch.Generator | None) -> tuple[Tensor, int]:
    """Mean loss on labels drawn from the model's predictive distribution, and the
    number of independent terms that mean is taken over.  Labels are drawn on the
    generator's device (a CPU generator serves CUDA models)."""
    z = outputs.detach()
    if generator is not None:
        z = z.to(generator.device)
    if loss == "cross_entropy":
        probs = torch.softmax(z.movedim(1, -1).reshape(-1, z.shape[1]), dim=-1)
        labels = torch.multinomial(probs, 1, generator=generator).view(z.movedim(1, -1).shape[:-1])
        return F.cross_entropy(outputs, labels.to(outputs.device)), labels.numel()
    if loss == "bce_with_logits":
        labels = torch.bernoulli(torch.sigmoid(z), generator=generator)
        return F.binary_cross_entropy_with_logits(outputs, labels.to(outputs.device)), labels.numel()
    # mse: (z - y)^2 is the negative log-likelihood of N(z, 1/2) up to constants.
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    labels = z + noise / 2**0.5
    return F.mse_loss(outputs, labels.to(outputs.device)), labels.numel()


def gauss_newton_bartlett_diagonal(
    outputs: Tensor,
    params: Iterable[Tensor],
    loss: str = "cross_entropy",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
    retain_graph: bool = False,
) -> list[Tensor]:
    r"""Sophia's Gauss-Newton-Bartlett estimate of :math:`\mathrm{diag}(J^\top H_L J)`.

    Args:
        outputs: model outputs (logits for the classification losses) with graph.
        params: parameters the diagonal is taken for.
        loss: ``"cross_entropy"`` (class dim 1), ``"bce_with_logits"`` or ``"mse"``;
            the training loss with ``reduction="mean"``.
        n_probes: label samples averaged (one backward pass each).
        generator: seeded generator for reproducible samples.
        retain_graph: keep the outputs' graph after the last probe (for a further
            backward pass on the same forward).
    """
    if loss not in _GNB_LOSSES:
        raise ValueError(f"loss={loss!r} is not supported by the Gauss-Newton-Bartlett estimator; allowed: {', '.join(_GNB_LOSSES)}")
    if n_probes < 1:
        raise ValueError(f"n_probes={n_probes} must be >= 1")
    plist = as_param_list(params)
    acc = [torch.zeros_like(p) for p in plist]
    for k in range(n_probes):
        sampled_loss, n_terms = sampled_label_loss(outputs, loss, generator)
        grads = torch.autograd.grad(sampled_loss, plist, retain_graph=retain_graph or k < n_probes - 1, allow_unused=True)
        for a, g in zip(acc, grads):
            if g is not None:
                a.add_(g * g, alpha=float(n_terms))
    return [a / n_probes for a in acc]
