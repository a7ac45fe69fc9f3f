"""Adam's moments (hpo2.optim.moments), once, against ``torch.optim.Adam`` in float64:
the whole step, with and without coupled weight decay, and the bias correction folded
into the step size (SOAP's order), each to 1e-12 over twenty steps of fresh gradients."""

from __future__ import annotations

import pytest
import torch

from hpo2.optim.moments import adam_step_, corrected_step_size, update_first_moment_, update_second_moment_

STEPS = 20


def _gradients(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, dtype=torch.float64, generator=gen) for _ in range(STEPS)]


def _torch_adam_path(start: torch.Tensor, grads: list[torch.Tensor], **settings: float) -> list[torch.Tensor]:
    """The parameter after each step of ``torch.optim.Adam`` fed ``grads``."""
    w = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([w], **settings)  # type: ignore[arg-type]  # lr, betas, eps, weight_decay
    path = []
    for g in grads:
        w.grad = g.clone()
        adam.step()
        path.append(w.detach().clone())
    return path


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_step_is_torch_adam(weight_decay: float) -> None:
    lr, beta1, beta2, eps = 0.05, 0.8, 0.95, 1e-8
    start = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = _gradients(0)
    expected = _torch_adam_path(start, grads, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    w, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for t, (g, reference) in enumerate(zip(grads, expected, strict=True), start=1):
        adam_step_(w, g + weight_decay * w, m, v, t, lr, beta1, beta2, eps)  # coupled decay, as K-FAC adds it
        torch.testing.assert_close(w, reference, rtol=0, atol=1e-12)


def test_the_step_size_form_is_torch_adam_without_eps() -> None:
    """m / sqrt(v) times lr sqrt(1 - b2^t) / (1 - b1^t) is Adam's step when eps is 0 (with eps the
    two orders differ by where eps sits: Kingma & Ba, end of sec. 2)."""
    lr, beta1, beta2 = 0.05, 0.9, 0.99
    start = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = _gradients(3)
    expected = _torch_adam_path(start, grads, lr=lr, betas=(beta1, beta2), eps=0.0)
    w, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
    for t, (g, reference) in enumerate(zip(grads, expected, strict=True), start=1):
        update_first_moment_(m, g, beta1)
        update_second_moment_(v, g, beta2)
        w.add_(m / v.sqrt(), alpha=-corrected_step_size(lr, beta1, beta2, t))
        torch.testing.assert_close(w, reference, rtol=0, atol=1e-12)
