"""Optimizer contracts: LM damping, curvature minibatch, negative curvature,
state_dict round trips, non-finite steps, diagnostics, configs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch import nn

from hpo2.optim import (
    KFAC,
    LBFGS,
    REGISTRY,
    SOAP,
    AdaHessian,
    BatchClosure,
    HessianFree,
    NewtonCG,
    SaddleFreeNewton,
    SettingsError,
    Shampoo,
    Sophia,
    from_config,
)
from tests.problems import Sin
from tests.reference import dense_ggn


def test_lm_damping_rises_after_a_poor_step_with_the_closed_form_ratio():
    model, lam = Sin(1.4), 1e-4
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    opt = HessianFree(model.parameters(), damping=lam, preconditioner=False)
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    w0, w1 = 1.4, float(model.w)
    p = w1 - w0
    g, gn = 2 * math.sin(w0) * math.cos(w0), 2 * math.cos(w0) ** 2
    expected_rho = (math.sin(w1) ** 2 - math.sin(w0) ** 2) / (g * p + 0.5 * gn * p * p)  # undamped model (Martens)
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(expected_rho, rel=1e-8)
    assert expected_rho < 0.25
    assert opt.diagnostics["damping_next"] == pytest.approx(1.5 * lam)
    assert opt.state_dict()["state"][0]["damping"] == pytest.approx(1.5 * lam)


def test_lm_damping_drops_after_a_good_step():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64, generator=gen), torch.randn(30, 1, dtype=torch.float64, generator=gen)
    model = nn.Linear(4, 1).double()
    opt = HessianFree(model.parameters(), damping=0.5, curvature_fraction=1.0)
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    assert opt.diagnostics["reduction_ratio"] > 0.75
    assert opt.diagnostics["damping_next"] == pytest.approx(0.5 * 2 / 3)


class NaNAwayFromStart(nn.Module):
    """Finite loss at the start, NaN anywhere else: every step must be rejected."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.7, -0.3], dtype=torch.float64))
        self.start = self.w.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = bool((self.w.detach() != self.start).any())
        return (self.w * x).sum(1, keepdim=True) * (math.nan if moved else 1.0)


def test_hessian_free_rejected_step_restores_params_resets_warm_start_and_boosts_damping():
    model = NaNAwayFromStart()
    x, y = torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    opt = HessianFree(model.parameters(), damping=1.0, max_ls_evals=5)
    opt.global_state["cg_solution"] = torch.ones(2, dtype=torch.float64)  # a stale warm start
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    assert opt.diagnostics["status"] == "rejected"
    assert torch.equal(model.w.detach(), model.start)
    assert opt.global_state["cg_solution"] is None
    assert opt.diagnostics["damping_next"] == pytest.approx(1.5)


def test_curvature_minibatch_uses_a_subset_for_products_and_the_whole_batch_for_the_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    loss_fn = nn.CrossEntropyLoss()
    opt = HessianFree(model.parameters(), curvature_fraction=0.25)
    loss, grads, operator = opt._gradient_and_curvature(BatchClosure(model, loss_fn, x, y), "ggn", 0.25)
    full_grad = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    for a, b in zip(grads, full_grad):
        torch.testing.assert_close(a, b)
    v = torch.randn(operator.dim, dtype=torch.float64)
    torch.testing.assert_close(operator.mv(v), dense_ggn(model, loss_fn, x[:4], y[:4]) @ v)


def test_hessian_free_warns_when_dropout_is_active():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1)).double()
    closure = BatchClosure(model, nn.MSELoss(), torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))
    with pytest.warns(UserWarning, match="dropout is active"):
        HessianFree(model.parameters()).step(closure)


class IndefiniteQuadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=gen))
        self.register_buffer("a", q @ torch.diag(torch.tensor([-2.0, -0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)) @ q.T)
        self.theta = nn.Parameter(torch.randn(6, dtype=torch.float64, generator=gen) * 0.1)

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.a @ self.theta + 0.1 * (self.theta**4).sum()


@pytest.mark.parametrize("mode", ["truncate", "direction"])
def test_newton_cg_handles_negative_curvature_by_descending(mode):
    problem = IndefiniteQuadratic()
    opt = NewtonCG(problem.parameters(), damping=0.0, negative_curvature=mode)
    before = float(problem())
    saw_negative = False
    for _ in range(20):
        opt.step(problem)
        saw_negative |= bool(opt.diagnostics.get("negative_curvature", 0))
    assert saw_negative
    assert float(problem()) < before - 0.1  # left the saddle region at 0, not stuck on it


def test_steihaug_newton_cg_respects_radius_on_indefinite_problem():
    problem = IndefiniteQuadratic()
    opt = NewtonCG(problem.parameters(), damping=0.0, globalization="trust_region", tr_radius=0.05)
    theta0 = problem.theta.detach().clone()
    opt.step(problem)
    assert float((problem.theta.detach() - theta0).norm()) <= 0.05 * (1 + 1e-9)
    assert opt.diagnostics["cg_stop"] in ("negative_curvature", "trust_region_boundary")


def _classification_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 5, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    return x, y


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


OPTIMIZERS = {
    "newton_cg": lambda p: NewtonCG(p, damping=1e-2, cg_max_iter=10),
    "newton_cg_tr": lambda p: NewtonCG(p, damping=1e-2, cg_max_iter=10, globalization="trust_region"),
    "hessian_free": lambda p: HessianFree(p, cg_max_iter=20, curvature_fraction=1.0),
    "lbfgs": lambda p: LBFGS(p, max_iter=3, history_size=4),
    "adahessian": lambda p: AdaHessian(p, lr=0.05, hessian_refresh=2),
    "sophia_gnb": lambda p: Sophia(p, lr=0.01, hessian_refresh=2),
    "sophia_hutchinson": lambda p: Sophia(p, lr=0.01, hessian_refresh=2, estimator="hutchinson"),
    "shampoo": lambda p: Shampoo(p, lr=0.01, precondition_frequency=2, start_preconditioning_step=2),
    "soap": lambda p: SOAP(p, lr=0.01, precondition_frequency=2),
    "saddle_free_newton": lambda p: SaddleFreeNewton(p, rank=4, refresh_every=2),
    "kfac": lambda p: KFAC(p, lr=0.05, cov_update_every=2, inverse_update_every=3),
    "kfac_empirical": lambda p: KFAC(p, lr=0.05, fisher="empirical", cov_update_every=2, inverse_update_every=3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_resumes_identically(name):
    x, y = _classification_batch()
    loss_fn = nn.CrossEntropyLoss()
    model = _mlp()
    opt = OPTIMIZERS[name](model.parameters())
    for _ in range(3):
        opt.step(BatchClosure(model, loss_fn, x, y))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(BatchClosure(model, loss_fn, x, y))

    resumed = _mlp(seed=99)
    resumed.load_state_dict(saved_model)
    opt2 = OPTIMIZERS[name](resumed.parameters())
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        opt2.step(BatchClosure(resumed, loss_fn, x, y))
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


class InfiniteCrossEntropy(nn.CrossEntropyLoss):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(outputs, targets) * math.inf


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_non_finite_loss_rejects_the_step_and_keeps_params(name):
    x, y = _classification_batch()
    model = _mlp()
    opt = OPTIMIZERS[name](model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    closure = BatchClosure(model, InfiniteCrossEntropy(), x, y)
    opt.step(closure)
    assert opt.diagnostics["status"] in ("nonfinite_loss", "nonfinite_grad")
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a.detach(), b)
    strict = type(opt)(model.parameters(), **opt.settings.model_dump(), raise_on_nonfinite=True)
    with pytest.raises(FloatingPointError, match="non"):
        strict.step(closure)


@pytest.mark.filterwarnings("error::UserWarning")  # a step warns about nothing (torch's scalar-conversion warning leaked)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_step_reports_diagnostics_and_lowers_the_loss(name):
    x, y = _classification_batch()
    loss_fn = nn.CrossEntropyLoss()
    model = _mlp()
    opt = OPTIMIZERS[name](model.parameters())
    with torch.no_grad():
        start = float(loss_fn(model(x), y))
    for _ in range(5):
        opt.step(BatchClosure(model, loss_fn, x, y))
        d = opt.diagnostics
        for key in ("loss", "grad_norm", "status", "n_grad", "n_hvp", "n_loss", "grad_equivalents"):
            assert key in d, key
        assert d["grad_equivalents"] >= d["n_grad"] >= 1
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) < start
    if name.startswith(("newton_cg", "hessian_free")):
        assert {"damping", "cg_iters", "cg_stop", "negative_curvature"} <= set(d)
        assert d["n_hvp"] >= d["cg_iters"]


def test_curvature_optimizers_refuse_closures_that_call_backward():
    x, y = _classification_batch()
    model = _mlp()
    opt = NewtonCG(model.parameters())

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="without calling loss.backward"):
        opt.step(closure)
    with pytest.raises(ValueError, match="BatchClosure"):
        HessianFree(model.parameters()).step(lambda: nn.functional.cross_entropy(model(x), y))


def test_from_config_builds_from_dict_yaml_json_and_name(tmp_path):
    model = _mlp()
    opt = from_config({"optimizer": {"name": "hessian_free", "settings": {"damping": 0.3}}}, model.parameters())
    assert isinstance(opt, HessianFree) and opt.settings.damping == 0.3
    (tmp_path / "best.yaml").write_text(yaml.safe_dump({"task": {"name": "x"}, "optimizer": {"name": "sophia", "settings": {"rho": 0.1}}}))
    assert from_config(tmp_path / "best.yaml", model.parameters()).settings.rho == 0.1
    (tmp_path / "o.json").write_text(json.dumps({"name": "lbfgs", "settings": {"history_size": 7}}))
    assert from_config(str(tmp_path / "o.json"), model.parameters()).settings.history_size == 7
    adam = from_config("adam", model.parameters())
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3


def test_from_config_errors_name_the_field_and_what_is_allowed(tmp_path):
    params = list(_mlp().parameters())
    with pytest.raises(SettingsError, match=r"optimizer.name: 'newton' is not a known optimizer \(did you mean 'newton_cg'\?\); allowed: newton_cg, hessian_free"):
        from_config({"name": "newton"}, params)
    with pytest.raises(SettingsError, match=r"unknown setting\(s\) dampening \(did you mean 'damping'\?\); allowed: batch_size, lr, damping"):
        from_config({"name": "newton_cg", "settings": {"dampening": 1}}, params)
    with pytest.raises(SettingsError, match=r"optimizer.settings.cg_max_iter = 0: Input should be greater than or equal to 1"):
        from_config({"name": "newton_cg", "settings": {"cg_max_iter": 0}}, params)
    (tmp_path / "bad.yaml").write_text("optimizer: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML: .*bad.yaml, line 1, column 21"):
        from_config(tmp_path / "bad.yaml", params)


def test_every_registered_optimizer_declares_a_search_space_containing_its_defaults():
    for name, spec in REGISTRY.items():
        space, defaults = spec.search_space(), spec.paper_defaults()
        assert space, name
        for setting, dim in space.items():
            value = defaults[setting]
            if hasattr(dim, "choices"):
                assert value in dim.choices or dim.when is not None, (name, setting)
            else:
                assert dim.low <= value <= dim.high, (name, setting, value)


class DiagonalQuadratic(nn.Module):
    """f = 1/2 sum a_i theta_i^2 - b^T theta: Hutchinson's z * Az is exactly a (z_i^2 = 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.tensor([0.5, 2.0, 8.0, 0.05], dtype=torch.float64))
        self.register_buffer("b", torch.tensor([1.0, -1.0, 2.0, 0.3], dtype=torch.float64))
        self.theta = nn.Parameter(torch.tensor([0.2, 0.4, -0.1, 1.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.a * self.theta**2).sum() - self.b @ self.theta


def test_adahessian_first_step_matches_closed_form():
    problem = DiagonalQuadratic()
    theta0 = problem.theta.detach().clone()
    g = problem.a * theta0 - problem.b
    lr, wd, eps = 0.1, 0.01, 1e-4
    AdaHessian(problem.parameters(), lr=lr, weight_decay=wd, eps=eps).step(problem)
    # Bias-corrected m = g, v = a^2: theta - lr (g / (|a| + eps) + wd theta).
    expected = theta0 * (1 - lr * wd) - lr * g / (problem.a.abs() + eps)
    torch.testing.assert_close(problem.theta.detach(), expected, rtol=1e-12, atol=1e-14)


def test_sophia_hutchinson_first_step_matches_closed_form():
    problem = DiagonalQuadratic()
    theta0 = problem.theta.detach().clone()
    g = problem.a * theta0 - problem.b
    lr, wd, rho, b1, b2 = 0.1, 0.1, 0.04, 0.965, 0.99
    Sophia(problem.parameters(), lr=lr, weight_decay=wd, rho=rho, estimator="hutchinson").step(problem)
    m, h = (1 - b1) * g, (1 - b2) * problem.a
    ratio = (m.abs() / (rho * h).clamp_min(1e-15)).clamp_max(1.0)
    expected = theta0 * (1 - lr * wd) - lr * m.sign() * ratio
    torch.testing.assert_close(problem.theta.detach(), expected, rtol=1e-12, atol=1e-14)


def test_adahessian_averages_conv_kernel_diagonals_spatially():
    from hpo2.optim.adahessian import spatial_average

    d = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    avg = spatial_average(d)
    torch.testing.assert_close(avg[1, 2], d[1, 2].abs().mean().expand(3, 3))
    flat = torch.randn(5, dtype=torch.float64)
    assert torch.equal(spatial_average(flat), flat)


@pytest.mark.parametrize(
    ("config", "steps"),
    [({"name": "hessian_free"}, 80), ({"name": "newton_cg"}, 80),
     ({"name": "newton_cg", "settings": {"globalization": "trust_region", "tr_radius": 0.01}}, 1500)],
    ids=["hessian_free", "newton_cg", "newton_cg-trust_region"],
)
def test_second_order_steps_stay_finite_after_convergence_in_float32(config, steps):
    """Regressions: Hessian-free on logistic regression converged in ~35 steps, then its
    float32 CG underflowed to NaN and a rejected step wrote NaN into the weights;
    Newton-CG's trust region kept shrinking on round-off ratios until the radius was 0."""
    from hpo2.tasks import build_task
    from hpo2.train import Budget, run_training

    task = build_task("logreg_breast_cancer")
    result = run_training(task, config, Budget(steps=steps), device="cpu")
    assert result.status == "completed", result.reason
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
    assert result.final.valid_metric >= task.target
