"""Optimizers against closed forms (quadratics, least squares), SciPy's trust-ncg,
and torch.optim.LBFGS."""

from __future__ import annotations

import pytest
import torch

from hpo2.optim import LBFGS, AdaHessian, HessianFree, NewtonCG, Sophia
from tests.problems import L2, RosenbrockResiduals, logistic_problem, logistic_scipy_optimum, rosenbrock_closure


@pytest.mark.parametrize(
    "make_opt,steps",
    [
        (lambda p: LBFGS(p, history_size=10), 10),
        (lambda p: HessianFree(p, damping=1e-2), 30),
        # The L2 term is outside the outputs, so the GGN misses its curvature L2 * I:
        # damping = L2 puts it back and makes (G + damping I) the exact Hessian.
        (lambda p: NewtonCG(p, curvature="ggn", damping=L2), 30),
        (lambda p: AdaHessian(p, lr=0.5, weight_decay=0.0), 600),
        (lambda p: Sophia(p, lr=0.05, weight_decay=0.0, rho=0.05, estimator="gnb", hessian_refresh=1), 600),
        (lambda p: Sophia(p, lr=0.05, weight_decay=0.0, rho=0.05, estimator="hutchinson", hessian_refresh=2), 600),
    ],
    ids=["lbfgs", "hessian_free", "newton_cg_ggn", "adahessian", "sophia_gnb", "sophia_hutchinson"],
)
def test_each_optimizer_converges_on_logistic_regression(make_opt, steps):
    _, f_ref = logistic_scipy_optimum()
    model, closure = logistic_problem()
    opt = make_opt(model.parameters())
    for _ in range(steps):
        opt.step(closure)
    gap = float(closure().detach()) - f_ref
    tolerance = 1e-8 if isinstance(opt, LBFGS | HessianFree | NewtonCG) else 2e-3
    assert gap + 1e-12 >= 0 and gap < tolerance


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: NewtonCG(p, damping=0.0, negative_curvature="direction"),
        lambda p: NewtonCG(p, damping=0.0, globalization="trust_region"),
        lambda p: LBFGS(p, history_size=10),
        lambda p: HessianFree(p, damping=1.0),
    ],
    ids=["newton_cg", "newton_cg_trust_region", "lbfgs", "hessian_free"],
)
# residuals of a bare parameter: the fallback warning is expected
@pytest.mark.filterwarnings("ignore:HessianFree. no per-layer statistics:UserWarning")
def test_rosenbrock_converges_to_one_one(make_opt):
    model = RosenbrockResiduals()
    closure = rosenbrock_closure(model)
    opt = make_opt(model.parameters())
    for _ in range(200):
        opt.step(closure)
        if float(closure().detach()) < 1e-20:
            break
    torch.testing.assert_close(model.xy.detach(), torch.ones(2, dtype=torch.float64), rtol=1e-6, atol=1e-6)


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
