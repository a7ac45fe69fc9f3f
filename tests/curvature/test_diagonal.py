"""Diagonal estimators checked statistically against explicit curvature matrices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo2.curvature import (
    GGNOperator,
    HessianOperator,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    output_hessian_for,
    rademacher_like,
)
from tests.conftest import make_mlp
from tests.reference import dense_ggn, dense_hessian


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def test_rademacher_probes_are_plus_minus_one_with_mean_zero(seed):
    gen = torch.Generator().manual_seed(seed)
    (z,) = rademacher_like([torch.empty(20000, dtype=torch.float64)], gen)
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 4 / 20000**0.5  # 4 standard errors
    (z2,) = rademacher_like([torch.empty(20000, dtype=torch.float64)], gen)
    assert not torch.equal(z, z2)  # fresh probes each call, never a constant


def test_hutchinson_diagonal_converges_to_true_diagonal(seed):
    model = make_mlp(seed, sizes=(4, 6, 3))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    true_diag = torch.diagonal(dense_hessian(model, loss_fn, x, y))
    op = HessianOperator(loss_fn(model(x), y), model.parameters())

    def rel_error(n_probes: int) -> float:
        est = _flat(hutchinson_diagonal(op, n_probes, torch.Generator().manual_seed(100 + seed)))
        return float((est - true_diag).norm() / true_diag.norm())

    few, many = rel_error(4), rel_error(4000)
    assert many < 0.1
    assert many < few / 5  # error falls like 1/sqrt(probes): 4 -> 4000 should cut it ~30x


@pytest.mark.parametrize(
    "loss_name,loss_fn",
    [("cross_entropy", nn.CrossEntropyLoss()), ("bce_with_logits", nn.BCEWithLogitsLoss()), ("mse", nn.MSELoss())],
)
def test_gauss_newton_bartlett_is_unbiased_for_ggn_diagonal(loss_name, loss_fn):
    model = make_mlp(7, sizes=(3, 4, 3))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    if loss_name == "cross_entropy":
        y = torch.randint(0, 3, (8,), generator=gen)
    else:
        y = torch.rand(8, 3, generator=gen, dtype=torch.float64)
    true_diag = torch.diagonal(dense_ggn(model, loss_fn, x, y))
    outputs = model(x)
    est = _flat(
        gauss_newton_bartlett_diagonal(
            outputs, model.parameters(), loss_name, n_probes=20000, generator=gen, retain_graph=True
        )
    )
    assert float((est - true_diag).norm() / true_diag.norm()) < 0.05
    # The GGN diagonal the closed-form operator gives agrees with the dense one too.
    op = GGNOperator(outputs, model.parameters(), output_hessian_for(loss_fn, outputs, y))
    torch.testing.assert_close(
        torch.stack([op.mv(e) for e in torch.eye(op.dim, dtype=torch.float64)]).diagonal(), true_diag
    )


def test_estimators_reject_bad_settings():
    model = make_mlp(0)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_probes=0"):
        gauss_newton_bartlett_diagonal(model(x), model.parameters(), n_probes=0)
    with pytest.raises(ValueError, match="allowed: cross_entropy, bce_with_logits, mse"):
        gauss_newton_bartlett_diagonal(model(x), model.parameters(), loss="hinge")
