"""Hessian and Gauss-Newton products against dense float64 references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo2.curvature import (
    GGNOperator,
    HessianOperator,
    functional_hvp,
    hvp,
    module_loss_fn,
    output_hessian_for,
)
from tests.conftest import make_cnn, make_mlp
from tests.reference import dense_ggn, dense_hessian


def _batch(model: nn.Module, seed: int, device: torch.device, n: int = 6, classes: int = 3):
    gen = torch.Generator().manual_seed(1000 + seed)
    if isinstance(model[0], nn.Conv2d):
        x = torch.randn(n, 1, 5, 5, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(n, model[0].in_features, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x.to(device), y.to(device)


def _random_vectors(params, seed: int):
    gen = torch.Generator().manual_seed(2000 + seed)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]


@pytest.mark.parametrize("make_model", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_hessian_products_match_dense_hessian(make_model, seed, device):
    model = make_model(seed)
    x, y = _batch(model, seed, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()
    h_dense = dense_hessian(model, loss_fn, x, y)
    model.to(device)
    x, y = x.to(device), y.to(device)
    params = list(model.parameters())

    op = HessianOperator(loss_fn(model(x), y), params)
    for k in range(3):  # the graph is reused across products
        v = _random_vectors(params, seed * 10 + k)
        flat_v = torch.cat([t.reshape(-1) for t in v])
        expected = h_dense.to(device) @ flat_v
        torch.testing.assert_close(op.mv(flat_v), expected, rtol=1e-9, atol=1e-11)
        got = torch.cat([t.reshape(-1) for t in op.matvec(v)])
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    assert op.n_products == 6

    # One-shot double backward and forward-over-reverse give the same product.
    v = _random_vectors(params, seed + 99)
    flat_v = torch.cat([t.reshape(-1) for t in v])
    expected = h_dense.to(device) @ flat_v
    one_shot = hvp(loss_fn(model(x), y), params, v)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in one_shot]), expected, rtol=1e-9, atol=1e-11)
    named = dict(model.named_parameters())
    fn = module_loss_fn(model, loss_fn, x, y)
    hv = functional_hvp(fn, {k: p.detach() for k, p in named.items()}, dict(zip(named, v)))
    torch.testing.assert_close(torch.cat([hv[k].reshape(-1) for k in named]), expected, rtol=1e-9, atol=1e-11)


def test_hessian_operator_gradient_matches_autograd(seed):
    model = make_mlp(seed)
    x, y = _batch(model, seed, torch.device("cpu"))
    loss = nn.functional.cross_entropy(model(x), y)
    op = HessianOperator(loss, model.parameters())
    expected = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    for g, e in zip(op.gradient, expected):
        torch.testing.assert_close(g, e)
    assert all(p.grad is None for p in model.parameters())  # operators never touch .grad


GGN_LOSSES = {
    "mse": (nn.MSELoss(), "float"),
    "mse_sum": (nn.MSELoss(reduction="sum"), "float"),
    "cross_entropy": (nn.CrossEntropyLoss(), "class"),
    "cross_entropy_sum": (nn.CrossEntropyLoss(reduction="sum"), "class"),
    "bce_with_logits": (nn.BCEWithLogitsLoss(), "binary"),
    "generic_huber": (nn.HuberLoss(delta=0.3), "float"),
    "generic_weighted_ce": (nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)), "class"),
}


def _targets(kind: str, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3000 + seed)
    if kind == "class":
        return torch.randint(0, 3, (n,), generator=gen)
    if kind == "binary":
        return torch.randint(0, 2, (n, 3), generator=gen).double()
    return torch.randn(n, 3, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("loss_name", list(GGN_LOSSES))
@pytest.mark.parametrize("make_model", [make_mlp, make_cnn], ids=["mlp", "cnn"])
def test_ggn_products_match_explicit_jt_hl_j(loss_name, make_model, seed, device):
    loss_fn, kind = GGN_LOSSES[loss_name]
    model = make_model(seed)
    x, _ = _batch(model, seed, torch.device("cpu"))
    y = _targets(kind, x.shape[0], seed)
    g_dense = dense_ggn(model, loss_fn, x, y)
    model.to(device)
    loss_fn = loss_fn.to(device)
    x, y = x.to(device), y.to(device)
    params = list(model.parameters())
    outputs = model(x)
    op = GGNOperator(outputs, params, output_hessian_for(loss_fn, outputs, y))
    for k in range(3):
        v = torch.cat([t.reshape(-1) for t in _random_vectors(params, seed * 10 + k)])
        torch.testing.assert_close(op.mv(v), g_dense.to(device) @ v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy", "bce_with_logits"])
def test_ggn_is_positive_semidefinite(loss_name, seed):
    loss_fn, kind = GGN_LOSSES[loss_name]
    model = make_mlp(seed)
    x, _ = _batch(model, seed, torch.device("cpu"))
    y = _targets(kind, x.shape[0], seed)
    outputs = model(x)
    op = GGNOperator(outputs, model.parameters(), output_hessian_for(loss_fn, outputs, y))
    dense = torch.stack([op.mv(e) for e in torch.eye(op.dim, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(dense, dense.T)
    eig = torch.linalg.eigvalsh(dense)
    assert eig.min() >= -1e-10 * eig.abs().max()
    # The full Hessian of the same loss is indefinite here: the GGN is not just H.
    h = dense_hessian(model, loss_fn, x, y)
    assert not torch.allclose(h, dense)


def test_cross_entropy_ignore_index_rows_contribute_nothing(seed):
    model = make_mlp(seed)
    x, y = _batch(model, seed, torch.device("cpu"))
    y[::2] = -100
    loss_fn = nn.CrossEntropyLoss()
    outputs = model(x)
    op = GGNOperator(outputs, model.parameters(), output_hessian_for(loss_fn, outputs, y))
    g_dense = dense_ggn(model, loss_fn, x, y)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(op.mv(v), g_dense @ v, rtol=1e-9, atol=1e-11)


def test_unused_parameter_gets_zero_curvature():
    model = make_mlp(0)
    unused = nn.Parameter(torch.ones(2, dtype=torch.float64))
    x, y = _batch(model, 0, torch.device("cpu"))
    params = [*model.parameters(), unused]
    out = hvp(nn.functional.cross_entropy(model(x), y), params, [torch.ones_like(p) for p in params])
    assert torch.equal(out[-1], torch.zeros(2, dtype=torch.float64))


def test_bad_input_gets_clear_value_errors():
    model = make_mlp(0)
    x, y = _batch(model, 0, torch.device("cpu"))
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    with pytest.raises(ValueError, match="scalar"):
        HessianOperator(nn.functional.cross_entropy(model(x), y, reduction="none"), params)
    with pytest.raises(ValueError, match="no autograd graph"):
        HessianOperator(loss.detach(), params)
    with pytest.raises(ValueError, match=r"params\[0\].*does not require grad"):
        HessianOperator(loss, [torch.zeros(3)])
    op = HessianOperator(loss, params)
    with pytest.raises(ValueError, match="has 1 tensors but there are 4"):
        op.matvec([torch.zeros(3)])
    with pytest.raises(ValueError, match=r"vectors\[0\] has shape \(2, 2\)"):
        op.matvec([torch.zeros(2, 2), *params[1:]])
    with pytest.raises(ValueError, match="flat vector of length"):
        op.mv(torch.zeros(op.dim + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction"):
        from hpo2.curvature import mse_output_hessian

        mse_output_hessian(torch.zeros(2), reduction="max")


def test_damped_operator_is_h_plus_lambda_identity_and_counts_base_products(seed):
    from hpo2.curvature import DampedOperator

    model = make_mlp(seed)
    x, y = _batch(model, seed, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()
    h = dense_hessian(model, loss_fn, x, y)
    base = HessianOperator(loss_fn(model(x), y), model.parameters())
    damped = DampedOperator(base, 0.3)
    v = torch.randn(base.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(
        damped.mv(v), (h + 0.3 * torch.eye(base.dim, dtype=torch.float64)) @ v, rtol=1e-9, atol=1e-11
    )
    assert base.n_products == 1


def test_functional_hvp_refuses_a_mapping_of_vectors_for_a_tuple_of_params():
    x = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="same form"):
        functional_hvp(lambda p: (p[0] ** 2).sum(), (x,), {"x": torch.ones(2, dtype=torch.float64)})
