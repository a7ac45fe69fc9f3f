"""Muon + AdamW: orthogonalised matrix updates, AdamW elsewhere, state_dict, config."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hpo2.optim import MuonWithAdamW, from_config


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(64, 12, generator=gen), torch.randint(0, 4, (64,), generator=gen)


def test_matrix_updates_are_orthogonalised_and_the_rest_follows_adamw():
    model, (x, y) = _model(), _batch()
    reference = copy.deepcopy(model)
    lr, adamw_lr = 0.02, 1e-3
    opt = from_config({"name": "muon", "settings": {"lr": lr, "adamw_lr": adamw_lr}}, model.parameters())
    assert isinstance(opt, MuonWithAdamW)
    biases = [p for p in reference.parameters() if p.dim() == 1]
    adamw = torch.optim.AdamW(biases, lr=adamw_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    weight = model[0].weight
    before = weight.detach().clone()
    grad_singular = None
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if grad_singular is None:
            grad_singular = torch.linalg.svdvals(weight.grad)
        opt.step()
        _step(reference, adamw, x, y)
        with torch.no_grad():  # the reference steps only the biases: give it Muon's weights
            for ours, ref in zip(model.parameters(), reference.parameters()):
                if ours.dim() == 2:
                    ref.copy_(ours)
        update = (before - weight.detach()) / (lr * max(1.0, 16 / 12) ** 0.5)
        singular = torch.linalg.svdvals(update)
        # Five quintic Newton-Schulz steps put singular values in roughly [0.7, 1.2]
        # (Jordan et al.), whatever the spread of the gradient's.
        assert float(singular.min()) > 0.5 and float(singular.max()) < 1.3, singular
        before = weight.detach().clone()
    assert float(grad_singular.max() / grad_singular.min()) > 3  # the gradient itself is far from orthogonal
    for ours, ref in zip([p for p in model.parameters() if p.dim() == 1], biases):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_state_dict_round_trip_resumes_identically():
    model, (x, y) = _model(), _batch()
    opt = from_config("muon", model.parameters())
    for _ in range(3):
        _step(model, opt, x, y)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        _step(model, opt, x, y)
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = from_config("muon", resumed.parameters())
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        _step(resumed, opt2, x, y)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_the_training_loop_charges_muons_newton_schulz_time_and_nothing_for_sgd() -> None:
    from torch import nn

    from hpo2.optim import from_config
    from hpo2.train import first_order_step

    torch.manual_seed(0)
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    counts = {}
    for name in ("muon", "sgd"):
        model = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 4))
        optimizer = from_config(name, model.parameters())
        counts[name] = [
            first_order_step(optimizer, model, nn.CrossEntropyLoss(), x, y)["grad_equivalents"] for _ in range(3)
        ]
    assert counts["sgd"] == [1.0, 1.0, 1.0]
    assert all(c > 1.0 for c in counts["muon"])  # five Newton-Schulz iterations are not free
