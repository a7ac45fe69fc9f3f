"""Hessian-free: the bugs of issue 12 (each test fails on the code before the fix),
the preconditioner against an independent per-sample loop, cg_decay, and a step
with a curvature chunk, all in float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from hpo2.curvature import DampedOperator
from hpo2.optim import BatchClosure, HessianFree
from hpo2.optim.costs import CostMeter
from hpo2.solvers import cg
from tests.problems import Sin
from tests.reference import dense_ggn


class Scalar(nn.Module):
    """z = w * x with a scalar weight (not a Linear: the preconditioner falls back)."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x


def bumpy_loss(z: Tensor, y: Tensor) -> Tensor:
    """(z - y)^2 with a tall narrow bump at z = 1.5, halfway to the minimum at y = 2."""
    return ((z - y) ** 2).mean() + 50 * torch.exp(-(((z - 1.5) / 0.1) ** 2)).mean()


@pytest.mark.parametrize("evaluation_batch", [None, "gradient"])
def test_a_step_with_lr_below_one_is_evaluated_before_it_is_taken(evaluation_batch: str | None) -> None:
    """The full Newton step lands past the bump (Armijo holds at t=1); 0.75 of it lands
    on the bump.  The step actually taken must pass Armijo."""
    model = Scalar(0.0)
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 2.0, dtype=torch.float64)
    extra = {} if evaluation_batch is None else {"evaluation_batch": evaluation_batch}
    opt = HessianFree(model.parameters(), lr=0.75, damping=1e-6, preconditioner=False, curvature_fraction=1.0, **extra)
    before = float(bumpy_loss(model(x), y).detach())
    opt.step(BatchClosure(model, bumpy_loss, x, y))
    after = float(bumpy_loss(model(x), y).detach())
    t = opt.diagnostics["step_size"]
    slope = -4.0 * 2.0  # f'(0) * p with p = 2 (the Newton step of (z - 2)^2; the bump is flat at 0)
    assert opt.diagnostics["ls_evals"] >= 1
    assert 0 < t < 0.75
    assert after <= before + 1e-2 * t * slope
    assert after < before


def _tanh_problem(seed: int, n: int = 24) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    with torch.no_grad():
        model[0].weight.mul_(4)
    return model, torch.randn(n, 3, dtype=torch.float64), torch.randn(n, 2, dtype=torch.float64)


SOLVE = {"damping": 1e-4, "curvature_fraction": 1.0, "preconditioner": False, "cg_max_iter": 12, "martens_eps": 1e-12}


def _find_backtracking_step() -> tuple[int, nn.Module, Tensor, Tensor]:
    for seed in range(40):
        model, x, y = _tanh_problem(seed)
        probe = HessianFree(model.parameters(), **SOLVE)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        probe.step(BatchClosure(model, nn.MSELoss(), x, y))
        model.load_state_dict(state)
        if probe.diagnostics.get("backtracked_to_iter", probe.diagnostics["cg_iters"]) < probe.diagnostics["cg_iters"]:
            return seed, model, x, y
    raise AssertionError("no problem where CG backtracking walks back")


def test_warm_start_is_the_final_cg_iterate_not_the_backtracked_one() -> None:
    """Martens (2010) sec. 4.5-4.6: backtracking picks the update; the next solve
    starts from the last CG iterate.  Replay the solve and compare."""
    _, model, x, y = _find_backtracking_step()
    loss_fn = nn.MSELoss()
    opt = HessianFree(model.parameters(), **SOLVE)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ggn = dense_ggn(model, loss_fn, x, y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))])
    opt.step(BatchClosure(model, loss_fn, x, y))
    replay = cg(lambda v: ggn @ v + 1e-4 * v, -grad, max_iter=12, tol=0.0)
    assert opt.diagnostics["backtracked_to_iter"] < opt.diagnostics["cg_iters"] == replay.n_iter
    torch.testing.assert_close(opt.global_state["cg_solution"], replay.x, rtol=1e-6, atol=1e-9)
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - theta
    assert not torch.allclose(moved, replay.x)  # the update itself was the backtracked iterate


def test_reduction_ratio_uses_the_undamped_model_and_the_curvature_chunk() -> None:
    """rho = (f_c(x + p) - f_c(x)) / (g^T p + p^T G_c p / 2): f_c and G_c on the chunk
    (first step: chunk 0, the first half), g on the whole batch, no damping term."""
    model, x, y = _tanh_problem(1, n=16)
    with torch.no_grad():
        model[0].weight.div_(4)
    loss_fn, damping = nn.MSELoss(), 3.0
    params = list(model.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), params)])
    ggn_chunk = dense_ggn(model, loss_fn, x[:8], y[:8])
    before = float(loss_fn(model(x[:8]), y[:8]).detach())
    opt = HessianFree(params, damping=damping, curvature_fraction=0.5, preconditioner=False)
    opt.step(BatchClosure(model, loss_fn, x, y))
    assert opt.diagnostics["step_size"] == 1.0 and opt.diagnostics["curvature_samples"] == 8
    p = torch.cat([q.detach().reshape(-1) for q in params]) - theta
    after = float(loss_fn(model(x[:8]), y[:8]).detach())
    expected = (after - before) / float(grad @ p + 0.5 * p @ ggn_chunk @ p)
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(expected, rel=1e-8)
    damped = (after - before) / float(grad @ p + 0.5 * p @ (ggn_chunk + damping * torch.eye(len(p), dtype=p.dtype)) @ p)
    assert abs(expected - damped) > 1e-3 * abs(expected)  # the test tells the two apart


def test_a_curvature_chunk_step_solves_with_the_chunk_ggn_and_cycles() -> None:
    """With curvature_fraction=1/4 the step is CG on (G_chunk + lambda I) p = -g_full
    (checked against a dense solve), and the chunk cycles 0, 1, 2, 3, 0, ..."""
    model, x, y = _tanh_problem(2, n=16)
    loss_fn, damping = nn.MSELoss(), 0.5
    params = list(model.parameters())
    opt = HessianFree(params, damping=damping, curvature_fraction=0.25, preconditioner=False, backtracking=False,
                      martens_eps=1e-12)
    for chunk in range(5):
        rows = slice(4 * (chunk % 4), 4 * (chunk % 4) + 4)
        theta = torch.cat([p.detach().reshape(-1) for p in params])
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), params)])
        damping_now = opt.global_state.get("damping", damping)
        system = dense_ggn(model, loss_fn, x[rows], y[rows]) + damping_now * torch.eye(len(theta), dtype=theta.dtype)
        warm = opt.global_state.get("cg_solution")
        opt.step(BatchClosure(model, loss_fn, x, y))
        if warm is None:  # a cold start of full CG: the dense solution
            solution = torch.linalg.solve(system, -grad)
            t = opt.diagnostics["step_size"]
            moved = torch.cat([p.detach().reshape(-1) for p in params]) - theta
            torch.testing.assert_close(moved, t * solution, rtol=1e-5, atol=1e-8)
        assert opt.global_state["chunk"] == chunk % 4 + 1


def test_cg_decay_scales_the_warm_start() -> None:
    """The first CG product of a warm-started solve is A (decay * x_prev), x_prev the
    stored solution of the previous step."""
    results = {}
    for decay in (0.0, 0.95):
        model, x, y = _tanh_problem(3, n=16)
        with torch.no_grad():
            model[0].weight.div_(4)
        opt = HessianFree(model.parameters(), damping=1.0, curvature_fraction=1.0, cg_decay=decay, preconditioner=False)
        closure = BatchClosure(model, nn.MSELoss(), x, y)
        opt.step(closure)
        stored = opt.global_state["cg_solution"].clone()
        calls: list[Tensor] = []
        original = DampedOperator.mv

        def spy(self: DampedOperator, v: Tensor) -> Tensor:
            calls.append(v.detach().clone())  # noqa: B023  (spy used and removed within this iteration)
            return original(self, v)  # noqa: B023

        DampedOperator.mv = spy  # type: ignore[method-assign]
        try:
            opt.step(closure)
        finally:
            DampedOperator.mv = original  # type: ignore[method-assign]
        results[decay] = (calls[0], stored)
    first, stored = results[0.95]
    torch.testing.assert_close(first, 0.95 * stored)
    assert stored.norm() > 0
    cold_first, _ = results[0.0]
    torch.testing.assert_close(cold_first, torch.zeros_like(cold_first))


def _loop_fisher_diagonal(model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(1/N) sum_n grad l_n ** 2 by one backward pass per sample (the reference)."""
    params = list(model.parameters())
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for n in range(x.shape[0]):
        g = torch.autograd.grad(loss_fn(model(x[n : n + 1]), y[n : n + 1]), params)
        total += torch.cat([gi.reshape(-1) for gi in g]) ** 2
    return total / x.shape[0]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_preconditioner_matches_a_per_sample_loop(kind: str) -> None:
    torch.manual_seed(4)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        x = torch.randn(10, 4, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()
        x = torch.randn(10, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    loss_fn = nn.CrossEntropyLoss()
    opt = HessianFree(model.parameters(), curvature_fraction=1.0)
    _, _, squares, _ = opt._gradient_and_squares(BatchClosure(model, loss_fn, x, y), True, retain=False)
    torch.testing.assert_close(squares, _loop_fisher_diagonal(model, loss_fn, x, y), rtol=1e-9, atol=1e-14)


def test_preconditioner_falls_back_for_unknown_layers() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    opt = HessianFree(model.parameters(), curvature_fraction=1.0)
    with pytest.warns(UserWarning, match=r"HessianFree: no per-layer statistics for 1 layer\(s\): 1 \(LayerNorm\)"):
        _, _, squares, _ = opt._gradient_and_squares(BatchClosure(model, loss_fn, x, y), True, retain=False)
    # a sum-reduced loss L = sum_n l_n: the empirical Fisher is sum_n grad l_n ** 2
    torch.testing.assert_close(squares, 7 * _loop_fisher_diagonal(model, loss_fn, x, y), rtol=1e-9, atol=1e-14)


def test_counts_are_fractions_of_the_batch() -> None:
    model, x, y = _tanh_problem(6, n=20)
    opt = HessianFree(model.parameters(), curvature_fraction=0.25, cg_max_iter=5, backtracking=False)
    opt.costs = CostMeter(calibrate=False)  # the nominal prices: a pass over a fraction costs that fraction
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    d = opt.diagnostics
    assert d["n_grad"] == 1
    # one product per CG iteration (cold start) + building the operator
    assert d["n_hvp"] == pytest.approx(0.25 * (d["cg_iters"] + 1))
    # chunk forward for the products, chunk loss before and after, the final line search on the batch
    assert d["n_loss"] == pytest.approx(0.25 * 3 + d["ls_evals"])
    assert d["grad_equivalents"] == pytest.approx(d["n_grad"] + d["n_hvp"] + d["n_loss"] / 3)
    assert math.isfinite(d["reduction_ratio"])


def test_lm_damping_rises_after_a_poor_step_with_the_closed_form_ratio():
    model, lam = Sin(1.4), 1e-4
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    opt = HessianFree(model.parameters(), damping=lam, preconditioner=False)
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    w0, w1 = 1.4, float(model.w.detach())
    p = w1 - w0
    g, gn = 2 * math.sin(w0) * math.cos(w0), 2 * math.cos(w0) ** 2
    expected_rho = (math.sin(w1) ** 2 - math.sin(w0) ** 2) / (g * p + 0.5 * gn * p * p)  # undamped model (Martens)
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(expected_rho, rel=1e-8)
    assert expected_rho < 0.25
    assert opt.diagnostics["damping_next"] == pytest.approx(1.5 * lam)
    assert opt.state_dict()["state"][0]["damping"] == pytest.approx(1.5 * lam)


def test_lm_damping_drops_after_a_good_step():
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(30, 4, dtype=torch.float64, generator=gen),
        torch.randn(30, 1, dtype=torch.float64, generator=gen),
    )
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


# a bare parameter, no nn.Linear: the fallback warning is expected
@pytest.mark.filterwarnings("ignore:HessianFree. no per-layer statistics:UserWarning")
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
    loss, grads, operator, fraction = opt._gradient_and_curvature(BatchClosure(model, loss_fn, x, y), "ggn", 0.25)
    assert fraction == 0.25
    full_grad = torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))
    for a, b in zip(grads, full_grad):
        torch.testing.assert_close(a, b)
    v = torch.randn(operator.dim, dtype=torch.float64)
    torch.testing.assert_close(operator.mv(v), dense_ggn(model, loss_fn, x[:4], y[:4]) @ v)


def test_hessian_free_warns_when_dropout_is_active():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1)).double()
    closure = BatchClosure(
        model, nn.MSELoss(), torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    )
    with pytest.warns(UserWarning, match="dropout is active"):
        HessianFree(model.parameters()).step(closure)


def test_hessian_free_without_damping_solves_least_squares_in_one_step(seed, device):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 6, dtype=torch.float64, generator=gen)
    y = torch.randn(40, 2, dtype=torch.float64, generator=gen)
    model = nn.Linear(6, 2, bias=False).double()
    x, y, model = x.to(device), y.to(device), model.to(device)
    opt = HessianFree(model.parameters(), damping=0.0, preconditioner=False, martens_eps=1e-12, cg_max_iter=200,
                      curvature_fraction=1.0)
    opt.step(BatchClosure(model, nn.MSELoss(), x, y))
    expected = torch.linalg.lstsq(x, y).solution.T
    torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-7, atol=1e-9)
    # On a quadratic the model is exact: reduction ratio 1, so LM damping drops (0 stays 0).
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("exponent", [0.75, 0.5])
def test_one_cg_iteration_steps_along_the_preconditioned_gradient(exponent: float) -> None:
    """From x0 = 0, CG's first iterate is a multiple of M^{-1} g with M = (diag(F) + lambda)^exponent
    (Martens 2010 sec. 4.7), F the empirical Fisher diagonal of an independent per-sample loop."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    loss_fn, damping = nn.CrossEntropyLoss(), 1e-2
    params = list(model.parameters())
    theta0 = torch.cat([p.detach().reshape(-1) for p in params])
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_fn(model(x), y), params)])
    expected = -g / (_loop_fisher_diagonal(model, loss_fn, x, y) + damping) ** exponent
    opt = HessianFree(params, damping=damping, preconditioner_exponent=exponent, cg_max_iter=1, curvature_fraction=1.0)
    opt.step(BatchClosure(model, loss_fn, x, y))
    step = torch.cat([p.detach().reshape(-1) for p in params]) - theta0
    assert opt.diagnostics["cg_iters"] == 1 and float(step.norm()) > 0
    torch.testing.assert_close(step / step.norm(), expected / expected.norm(), rtol=1e-8, atol=1e-12)
