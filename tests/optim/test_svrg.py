"""SVRG (hpo2.optim.svrg): linear convergence to the least-squares solution with a
constant step where SGD stalls, unbiasedness of the corrected gradient, the
variance-reduction diagnostic, counting, and the training loop's snapshot."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hpo2.optim import SVRG, BatchClosure, from_config
from hpo2.tasks import build_task
from hpo2.train import Budget, run_training

N, D, BATCH = 200, 8, 10


def least_squares(seed: int) -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """F(w) = 1/n sum_i (x_i w - y_i)^2 / 2 with noise, so SGD's gradients never vanish at w*."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, dtype=torch.float64, generator=gen)
    w_true = torch.randn(D, 1, dtype=torch.float64, generator=gen)
    y = x @ w_true + 0.5 * torch.randn(N, 1, dtype=torch.float64, generator=gen)
    model = nn.Linear(D, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    w_star = torch.linalg.lstsq(x, y).solution.T
    return model, x, y, w_star


def half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * nn.functional.mse_loss(out, target)


def run_epochs(
    model: nn.Linear,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    w_star: torch.Tensor,
) -> list[float]:
    """Errors ||w - w*|| after each epoch of shuffled minibatches."""
    gen = torch.Generator().manual_seed(1)
    errors = []
    for _ in range(epochs):
        if isinstance(optimizer, SVRG):
            optimizer.snapshot(BatchClosure(model, half_mse, x, y), BATCH)
        order = torch.randperm(N, generator=gen)
        for start in range(0, N, BATCH):
            idx = order[start : start + BATCH]
            closure = BatchClosure(model, half_mse, x[idx], y[idx])
            if isinstance(optimizer, SVRG):
                optimizer.step(closure)
            else:
                optimizer.zero_grad()
                closure().backward()
                optimizer.step()
        errors.append(float((model.weight.detach() - w_star).norm()))
    return errors


def test_svrg_converges_linearly_where_sgd_stalls(seed: int) -> None:
    lr = 0.05
    model, x, y, w_star = least_squares(seed)
    svrg_errors = run_epochs(
        model, x, y, SVRG(model.parameters(), lr=lr, snapshot_every=1, variance_probes=0), 40, w_star
    )
    model, x, y, w_star = least_squares(seed)
    sgd_errors = run_epochs(model, x, y, torch.optim.SGD(model.parameters(), lr=lr), 40, w_star)
    assert svrg_errors[-1] < 1e-9
    # linear: the error shrinks by a steady factor per epoch over the last 20 epochs
    rates = [b / a for a, b in zip(svrg_errors[19:-1], svrg_errors[20:])]
    assert max(rates) < 0.7
    # SGD with the same constant step: a noise floor, no progress in its last 20 epochs
    assert min(sgd_errors[20:]) > 1e-3
    assert sgd_errors[-1] > 0.3 * sgd_errors[19]


def test_corrected_gradient_is_unbiased(seed: int) -> None:
    """mean_i [g_i(w) - g_i(w~) + mu~] = grad F(w), read off single-sample steps with lr 1."""
    model, x, y, _ = least_squares(seed)
    opt = SVRG(model.parameters(), lr=1.0, momentum=0.0, variance_probes=0)
    opt.snapshot(BatchClosure(model, half_mse, x, y), BATCH)
    with torch.no_grad():
        model.weight.add_(torch.randn(1, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    w = model.weight.detach().clone()
    directions = []
    for i in range(N):
        opt.step(BatchClosure(model, half_mse, x[i : i + 1], y[i : i + 1]))
        directions.append(w - model.weight.detach())
        with torch.no_grad():
            model.weight.copy_(w)
    full = torch.autograd.grad(half_mse(model(x), y), model.weight)[0]
    mean = torch.stack(directions).mean(0)
    torch.testing.assert_close(mean, full, rtol=1e-10, atol=1e-12)
    # each single direction differs: a real stochastic estimate
    assert float(torch.stack(directions).std(0).norm()) > 1e-3


def test_variance_reduction_diagnostic_and_counting() -> None:
    model, x, y, w_star = least_squares(0)
    opt = SVRG(model.parameters(), lr=0.05, snapshot_every=1, variance_probes=8)
    run_epochs(model, x, y, opt, 6, w_star)
    d = opt.snapshot_diagnostics
    # near w*, the corrected gradient's variance is far below the plain minibatch gradient's
    assert 0 < d["variance_corrected"] < 0.05 * d["variance_plain"]
    assert d["variance_ratio"] == pytest.approx(d["variance_corrected"] / d["variance_plain"])
    assert d["snapshot_grad_equivalents"] == pytest.approx(N / BATCH + 2 * 8)
    opt.step(BatchClosure(model, half_mse, x[:BATCH], y[:BATCH]))
    assert opt.diagnostics["n_grad"] == 2 and opt.diagnostics["grad_equivalents"] == 2
    assert opt.diagnostics["variance_ratio"] == d["variance_ratio"]
    # far from the snapshot the correction no longer helps as much
    with torch.no_grad():
        model.weight.add_(3.0)
    opt.snapshot(BatchClosure(model, half_mse, x, y), BATCH)
    assert opt.snapshot_diagnostics["variance_ratio"] > 0.5


def test_snapshot_every_and_large_batch_variant() -> None:
    model, x, y, _ = least_squares(0)
    opt = SVRG(model.parameters(), snapshot_every=2, snapshot_samples=50, variance_probes=0)
    data = BatchClosure(model, half_mse, x, y)
    with pytest.raises(ValueError, match="snapshot"):
        opt.step(BatchClosure(model, half_mse, x[:BATCH], y[:BATCH]))
    spent = [opt.snapshot(data, BATCH) for _ in range(4)]
    assert spent == [50 / BATCH, 0.0, 50 / BATCH, 0.0]
    assert opt.global_state["snapshots_taken"] == 2


def test_state_dict_round_trip() -> None:
    model, x, y, w_star = least_squares(0)
    opt = SVRG(model.parameters(), lr=0.05, momentum=0.5, variance_probes=0)
    run_epochs(model, x, y, opt, 1, w_star)
    twin = copy.deepcopy(model)
    opt2 = SVRG(twin.parameters(), lr=0.05, momentum=0.5, variance_probes=0)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for m, o in ((model, opt), (twin, opt2)):
        o.step(BatchClosure(m, half_mse, x[:BATCH], y[:BATCH]))
    torch.testing.assert_close(model.weight, twin.weight, rtol=0, atol=0)


def test_training_loop_counts_the_snapshot() -> None:
    task = build_task("digits_mlp", {})
    result = run_training(
        task, {"name": "svrg", "settings": {"snapshot_every": 1, "variance_probes": 2}}, Budget(epochs=2), device="cpu"
    )
    steps_per_epoch = result.steps // 2
    n_train = len(task.train)
    snapshot = n_train / task.batch_size
    expected = 2 * result.steps + 2 * snapshot + 2 * 2  # two gradients per step; two snapshots; probes on the second
    assert result.status == "completed"
    assert result.grad_equivalents == pytest.approx(expected)
    assert steps_per_epoch >= 1
    assert "variance_ratio" in result.step_diagnostics[-1]
    assert isinstance(from_config({"name": "svrg"}, task.model.parameters()), SVRG)


def test_variance_estimates_match_the_exact_sampling_variance() -> None:
    """Minibatches of b out of n without replacement: Var[mean_B v_i] = (n-b)/(b(n-1)) * mean_i ||v_i - v_bar||^2,
    with v_i = g_i(w) (plain) and v_i = g_i(w) - g_i(w~) (corrected), g_i in closed form."""
    model, x, y, _ = least_squares(0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.weight.copy_(3 * torch.randn(1, D, dtype=torch.float64, generator=gen))
    opt = SVRG(model.parameters(), snapshot_every=1, variance_probes=400, seed=3)
    opt.snapshot(BatchClosure(model, half_mse, x, y), BATCH)
    w_old = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(0.5 * torch.randn(1, D, dtype=torch.float64, generator=gen))
    opt.snapshot(BatchClosure(model, half_mse, x, y), BATCH)

    def per_sample(w: torch.Tensor) -> torch.Tensor:
        return x * (x @ w.T - y)  # gradient of (x_i w - y_i)^2 / 2

    def sampling_variance(v: torch.Tensor) -> float:
        return float((v - v.mean(0)).pow(2).sum(1).mean()) * (N - BATCH) / (BATCH * (N - 1))

    g_now = per_sample(model.weight.detach())
    d = opt.snapshot_diagnostics
    assert d["variance_plain"] == pytest.approx(sampling_variance(g_now), rel=0.25)
    assert d["variance_corrected"] == pytest.approx(sampling_variance(g_now - per_sample(w_old)), rel=0.25)
