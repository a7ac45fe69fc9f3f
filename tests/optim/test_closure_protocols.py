"""The first-order baselines take both closure protocols (:mod:`hpo2.optim.baselines`): a torch-style
closure (it calls ``backward()``) steps exactly as with ``torch.optim``; an hpo2 closure (it returns the loss)
steps as ``zero_grad(); loss.backward(); step()`` does -- never a silent no-op."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from hpo2.optim import BatchClosure, from_config
from tests.problems import classification_batch, classification_mlp

CONFIGS = {
    "sgd": ({"name": "sgd", "settings": {"lr": 0.1, "momentum": 0.9}}, lambda p: torch.optim.SGD(p, lr=0.1,
                                                                                                   momentum=0.9)),
    "adam": ({"name": "adam", "settings": {"lr": 0.01}}, lambda p: torch.optim.Adam(p, lr=0.01)),
    "adamw": ({"name": "adamw", "settings": {"lr": 0.01}}, lambda p: torch.optim.AdamW(p, lr=0.01)),
}  # fmt: skip


def torch_style(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_torch_style_closure_steps_exactly_as_torch_optim(name: str) -> None:
    x, y = classification_batch()
    ours_model, torch_model = classification_mlp(), classification_mlp()
    config, make_torch = CONFIGS[name]
    ours, reference = from_config(config, ours_model.parameters()), make_torch(torch_model.parameters())
    for _ in range(4):
        loss = ours.step(torch_style(ours_model, ours, x, y))
        expected = reference.step(torch_style(torch_model, reference, x, y))
        assert torch.equal(loss, expected.detach())
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert ours.diagnostics["status"] == "ok" and ours.diagnostics["n_grad"] == 1


@pytest.mark.parametrize("name", [*CONFIGS, "muon"])
def test_an_hpo2_closure_steps_as_backward_then_step_even_over_stale_gradients(name: str) -> None:
    x, y = classification_batch()
    ours_model = classification_mlp()
    torch_model = copy.deepcopy(ours_model)
    config = CONFIGS[name][0] if name in CONFIGS else {"name": "muon", "settings": {"lr": 0.05, "adam_lr": 0.01}}
    ours, reference = from_config(config, ours_model.parameters()), from_config(config, torch_model.parameters())
    nn.functional.cross_entropy(ours_model(x * 3), y).backward()  # stale gradients the step must not use
    for _ in range(4):
        ours.step(BatchClosure(ours_model, nn.CrossEntropyLoss(), x, y))
        reference.zero_grad()
        nn.functional.cross_entropy(torch_model(x), y).backward()
        reference.step()
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_torch_style_closure_that_accumulates_keeps_torch_semantics() -> None:
    """A closure that adds to gradients already there (no zero_grad): nothing is zeroed or added."""
    x, y = classification_batch()
    ours_model, torch_model = classification_mlp(), classification_mlp()
    ours = from_config({"name": "sgd", "settings": {"lr": 0.1, "momentum": 0.0}}, ours_model.parameters())
    reference = torch.optim.SGD(torch_model.parameters(), lr=0.1)
    for model, opt in ((ours_model, ours), (torch_model, reference)):
        nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()  # a first micro-batch

        def closure(model: nn.Module = model) -> Tensor:
            loss = nn.functional.cross_entropy(model(x[8:]), y[8:])
            loss.backward()
            return loss

        opt.step(closure)
    for p, q in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_non_finite_loss_skips_the_step_and_a_closure_without_a_loss_is_refused() -> None:
    x, y = classification_batch()
    model = classification_mlp()
    opt = from_config("adam", model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(lambda: nn.functional.cross_entropy(model(x), y) * float("inf"))
    assert opt.diagnostics["status"] == "nonfinite_loss"
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match="the closure must return the scalar loss tensor"):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y).detach().item())  # type: ignore[arg-type, return-value]
