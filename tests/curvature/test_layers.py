"""Per-layer statistics (hpo2.curvature.layers) against explicit per-sample loops in
float64 and against the vmap per-sample path, on an MLP and a CNN, for mean and sum
reductions, class weights and ignore_index."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from hpo2.curvature.layers import LayerStatistics, per_sample_grad_squares, per_sample_scale


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4, bias=False), nn.Tanh(), nn.Linear(4, 3)).double()


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 2, stride=2, bias=False), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    ).double()


def _data(kind: str, n: int, seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = _mlp() if kind == "mlp" else _cnn()
    x = torch.randn(n, 5, dtype=torch.float64) if kind == "mlp" else torch.randn(n, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def _loop_squares(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """The reference: one backward per sample, each on that sample's own loss."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for n in range(x.shape[0]):
        grads = torch.autograd.grad(loss_fn(model(x[n : n + 1]), y[n : n + 1]), params, allow_unused=True)
        for t, g in zip(total, grads):
            if g is not None and torch.isfinite(g).all():
                t += g**2
    return total


def _one_pass(
    model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor
) -> tuple[LayerStatistics, Tensor, list[Tensor]]:
    params = list(model.parameters())
    with LayerStatistics(model, params) as stats:
        outputs = model(x)
        grads = torch.autograd.grad(loss_fn(outputs, y), params + [outputs])
    scale = per_sample_scale(loss_fn, outputs, y, grads[-1])
    return stats, scale, list(grads[:-1])


LOSSES = {
    "mean": lambda: nn.CrossEntropyLoss(),
    "sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
    "weighted": lambda: nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)),
    "ignore": lambda: nn.CrossEntropyLoss(ignore_index=1),
}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_grad_squares_match_per_sample_loop(kind: str, loss_name: str) -> None:
    model, x, y = _data(kind, 9, seed=3)
    loss_fn = LOSSES[loss_name]()
    stats, scale, _ = _one_pass(model, loss_fn, x, y)
    assert stats.fallback == []
    squares = stats.grad_squares(scale)
    reference = _loop_squares(model, loss_fn, x, y)
    for p, ref in zip(model.parameters(), reference):
        torch.testing.assert_close(squares[p], ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_grad_squares_match_vmap_path(kind: str) -> None:
    model, x, y = _data(kind, 11, seed=5)
    loss_fn = nn.CrossEntropyLoss()
    stats, scale, _ = _one_pass(model, loss_fn, x, y)
    params = list(model.parameters())
    squares = stats.grad_squares(scale)
    for p, ref in zip(params, per_sample_grad_squares(model, loss_fn, x, y, params)):
        torch.testing.assert_close(squares[p], ref, rtol=1e-9, atol=1e-12)


def test_per_sample_scale_reads_the_reduction() -> None:
    model, x, y = _data("mlp", 6, seed=0)
    for loss_fn, expected in (
        (nn.CrossEntropyLoss(), 6.0),
        (nn.CrossEntropyLoss(reduction="sum"), 1.0),
        (nn.MSELoss(), 6.0),
    ):
        target = y if isinstance(loss_fn, nn.CrossEntropyLoss) else torch.randn(6, 3, dtype=torch.float64)
        _, scale, _ = _one_pass(model, loss_fn, x, target)
        torch.testing.assert_close(scale, torch.full((6,), expected, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_kronecker_factors_and_gradient(kind: str) -> None:
    """The recorded a and g rebuild the gradient exactly (sum_n,t g a^T), and A, G
    are the stated second moments."""
    model, x, y = _data(kind, 7, seed=1)
    loss_fn = nn.CrossEntropyLoss()
    stats, scale, grads = _one_pass(model, loss_fn, x, y)
    by_param = dict(zip(model.parameters(), grads))
    for record in stats.layers:
        a, g_hat = record.activations(), record.output_grads(scale)
        # mean loss: gradient = (1/N) sum_n c_n^-1 ... = (1/N) sum_{n,t} g_hat a^T with c_n = N
        rebuilt = record.split(torch.einsum("nto,nti->oi", g_hat, a) / x.shape[0])
        for p, value in rebuilt.items():
            torch.testing.assert_close(value, by_param[p])
        big_a, big_g = record.kronecker_factors(scale)
        n, t = a.shape[0], a.shape[1]
        torch.testing.assert_close(
            big_a, sum(a[i, j, :, None] * a[i, j, None, :] for i in range(n) for j in range(t)) / n
        )
        torch.testing.assert_close(
            big_g, sum(g_hat[i, j, :, None] * g_hat[i, j, None, :] for i in range(n) for j in range(t)) / (n * t)
        )
        if record.has_bias:
            assert torch.all(a[..., -1] == 1)


def test_unknown_layers_fall_back_with_one_warning() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2)).double()
    shared = nn.Linear(2, 2).double()
    model.append(shared).append(shared)  # a layer used twice per forward
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randint(0, 2, (3,))
    stats = LayerStatistics(model)
    with pytest.warns(UserWarning, match=r"2 layer\(s\): 1 \(LayerNorm\), 3 \(Linear, called more") as record, stats:
        torch.autograd.grad(nn.CrossEntropyLoss()(model(x), y), list(model.parameters()))
    assert len([w for w in record if "LayerStatistics" in str(w.message)]) == 1
    assert stats.fallback == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert {r.name for r in stats.layers} == {"0", "2"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with stats:  # the same object does not warn again
            torch.autograd.grad(nn.CrossEntropyLoss()(model(x), y), list(model.parameters()))


def test_only_the_first_backward_is_recorded() -> None:
    model, x, y = _data("mlp", 4, seed=2)
    params = list(model.parameters())
    with LayerStatistics(model, params) as stats:
        loss = nn.CrossEntropyLoss()(model(x), y)
        torch.autograd.grad(loss, params, retain_graph=True)
        first = [r.raw_output_grad.clone() for r in stats.layers]
        torch.autograd.grad(3 * loss, params)
    for r, g in zip(stats.layers, first):
        torch.testing.assert_close(r.raw_output_grad, g)


def test_per_sample_scale_of_a_plain_function_loss_uses_the_generic_path() -> None:
    """A loss that is not a known module (here 3 x a mean cross-entropy): c_n = N is
    read off the loss by vmap, and the squares match the loop."""
    model, x, y = _data("mlp", 5, seed=4)

    def loss_fn(z: Tensor, t: Tensor) -> Tensor:
        return 3.0 * nn.functional.cross_entropy(z, t)

    stats, scale, _ = _one_pass(model, loss_fn, x, y)  # type: ignore[arg-type]
    torch.testing.assert_close(scale, torch.full((5,), 5.0, dtype=torch.float64))
    squares = stats.grad_squares(scale)
    for p, ref in zip(model.parameters(), _loop_squares(model, loss_fn, x, y)):  # type: ignore[arg-type]
        torch.testing.assert_close(squares[p], ref, rtol=1e-9, atol=1e-12)
