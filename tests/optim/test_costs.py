"""Costs at their measured price (issues 25 and 28): each operation an optimizer does is
priced once, at its first use, by timing it against a gradient (hpo2.optim.costs); the
counted gradient-equivalents follow those prices, not the sample fraction, and the
calibration never changes the arithmetic.  The clocks here are stubs: timings live in
benchmarks/optimizer_step_cost.py."""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from hpo2.optim import (
    LBFGS,
    AdaHessian,
    BatchClosure,
    CurvatureOptimizer,
    HessianFree,
    NewtonCG,
    SaddleFreeNewton,
    Shampoo,
    Sophia,
    StreamingClosure,
)
from hpo2.optim.costs import SOLVER_ITERATIONS, CostMeter, device_clock
from hpo2.tasks.loading import DatasetBatches

HF_MODULE = importlib.import_module("hpo2.optim.hessian_free")
MATRIX_MODULE = importlib.import_module("hpo2.optim.matrix_base")


class Ticks:
    """A clock that moves one second per reading, and ``extra`` more whenever told to
    (:meth:`wait`): every timed call lasts exactly one second plus what it waited."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now

    def wait(self, seconds: float) -> None:
        self.now += seconds


def _problem(n: int = 40, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (n,), generator=g)


def _step(opt: CurvatureOptimizer, model: nn.Module, x: Tensor, y: Tensor) -> dict:
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    return dict(opt.diagnostics)


# -- the meter


def test_the_meter_prices_by_the_median_runs_of_the_operation_and_of_a_gradient_in_turn() -> None:
    clock = [0.0]
    order: list[str] = []
    disturbed = iter([3.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 4.0, 1.0, 0.0])  # a busy machine stalls some runs

    def wait(seconds: float) -> None:
        clock[0] += seconds + next(disturbed, 0.0)

    def gradient() -> None:
        order.append("gradient")
        wait(2.0)

    def operation() -> None:
        order.append("operation")
        wait(0.5)

    meter = CostMeter(timer=lambda: clock[0], repeats=5)
    calibration = meter.measure(operation, gradient, torch.device("cpu"))
    assert calibration.ratio == pytest.approx(0.25)  # 0.5 s against 2 s: two stalled runs of five set nothing
    assert order == ["gradient", "operation"] * 5  # in turn: both see the same spell of load
    assert calibration.seconds == pytest.approx(5 * 2.5 + 13.0)
    three = meter.measure(lambda: (wait(3.0), 3)[1], lambda: wait(2.0), torch.device("cpu"))  # three operations a run
    assert three.ratio == pytest.approx(0.5)


def test_device_clock_waits_for_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    device_clock(torch.device("cpu"))
    assert waited == []
    device_clock(torch.device("cuda", 0))
    assert waited == [torch.device("cuda", 0)]


# -- Hessian-free: chunk work at its price, not its fraction (issue 28)


def test_hessian_free_prices_its_chunk_work_by_the_calibration_not_the_sample_fraction() -> None:
    """With a stub clock every timed run lasts one second: each operation costs one
    gradient, except a product, timed as a few CG iterations that did several."""
    model, x, y = _problem()
    opt = HessianFree(model.parameters(), curvature_fraction=0.1, cg_max_iter=20)
    opt.costs = CostMeter(timer=Ticks())
    d = _step(opt, model, x, y)
    assert d["curvature_samples"] == 4
    assert d["price_product"] == pytest.approx(1 / SOLVER_ITERATIONS)
    for name in ("gradient_and_squares", "curvature_setup", "chunk_loss"):
        assert d[f"price_{name}"] == pytest.approx(1.0), name
    assert d["calibration_seconds"] > 0
    # the work in chunk products, chunk losses and full-batch losses, read off the counters
    fraction = 0.1
    products = d["n_hvp"] / fraction - 1  # each product counts a tenth, and so does building the operator
    batch_losses = d["ls_evals"]
    chunk_losses = (d["n_loss"] - fraction - batch_losses) / fraction  # less the operator's forward pass
    assert products >= d["cg_iters"] >= 1 and chunk_losses >= 2
    priced = 1.0 + 1.0 + products / SOLVER_ITERATIONS + chunk_losses * 1.0 + batch_losses * d.get("price_batch_loss", 0)
    assert d["grad_equivalents"] == pytest.approx(priced)
    nominal = d["n_grad"] + d["n_hvp"] + d["n_loss"] / 3
    assert d["grad_equivalents"] > 1.5 * nominal  # the fractions would count far less


def test_hessian_free_counts_follow_the_prices_it_is_given() -> None:
    prices = {"gradient_and_squares": 1.7, "curvature_setup": 0.4, "product": 0.55, "chunk_loss": 0.2,
              "batch_loss": 0.6}
    model, x, y = _problem()
    opt = HessianFree(model.parameters(), curvature_fraction=0.25, cg_max_iter=8, backtracking=False)
    opt.costs = CostMeter(prices=prices)
    d = _step(opt, model, x, y)
    assert not any(key.startswith("price_") for key in d)  # fixed prices are not measured
    products = d["n_hvp"] / 0.25 - 1
    chunk_losses = (d["n_loss"] - 0.25 - d["ls_evals"]) / 0.25
    expected = 1.7 + 0.4 + 0.55 * products + 0.2 * chunk_losses + 0.6 * d["ls_evals"]
    assert d["grad_equivalents"] == pytest.approx(expected)


def test_the_fallback_preconditioner_is_priced_with_the_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters outside Linear/Conv2d get per-sample gradients: the gradient step's price
    includes them (issue 25: counted as one gradient, they cost about 24)."""
    clock = Ticks()
    fallback = HF_MODULE.per_sample_grad_squares

    def slow_fallback(*args: object, **kwargs: object) -> list[Tensor]:
        clock.wait(10.0)
        return fallback(*args, **kwargs)

    monkeypatch.setattr(HF_MODULE, "per_sample_grad_squares", slow_fallback)
    model, x, y = _problem()
    model = nn.Sequential(model[0], nn.LayerNorm(8).double(), *model[1:])
    opt = HessianFree(model.parameters(), curvature_fraction=0.5, cg_max_iter=5)
    opt.costs = CostMeter(timer=clock)
    with pytest.warns(UserWarning, match="no per-layer statistics"):
        d = _step(opt, model, x, y)
    assert d["price_gradient_and_squares"] == pytest.approx(11.0)
    assert d["n_grad"] == 2.0  # the gradient, and the fallback's pass over the whole batch


def test_a_streamed_batch_prices_chunk_work_against_the_whole_batch_gradient() -> None:
    """Calibration times a gradient on one loader batch (16 of 96 samples): a loss on the
    batch is priced by its ratio to that gradient, work on the chunk by the ratio to six."""
    model, x, y = _problem(n=96)
    source = DatasetBatches(TensorDataset(x, y), torch.device("cpu"), 3)
    closure = StreamingClosure(model, nn.CrossEntropyLoss(), source.window(source.epoch_order(), 16))
    opt = HessianFree(model.parameters(), evaluation_batch="curvature", cg_max_iter=10)
    opt.costs = CostMeter(timer=Ticks())
    opt.step(closure)
    d = opt.diagnostics
    assert d["curvature_samples"] == 10
    assert d["price_gradient_and_squares"] == pytest.approx(1.0)
    assert d["price_curvature_setup"] == pytest.approx(1 / 6) and d["price_chunk_loss"] == pytest.approx(1 / 6)
    assert d["price_product"] == pytest.approx(1 / (6 * SOLVER_ITERATIONS))
    if "price_batch_loss" in d:
        assert d["price_batch_loss"] == pytest.approx(1.0)


# -- the other optimizers that price Hessian products, setups and probes (issue 25)


def test_newton_cg_counts_the_hessian_setup_on_a_curvature_chunk() -> None:
    """The create_graph backward on the curvature sub-batch was not counted at all."""
    model, x, y = _problem()
    opt = NewtonCG(model.parameters(), curvature="hessian", curvature_fraction=0.5)
    opt.costs = CostMeter(calibrate=False)
    opt._start_diagnostics()
    opt._gradient_and_curvature(BatchClosure(model, nn.CrossEntropyLoss(), x, y), "hessian", 0.5)
    d = opt._finish_diagnostics()
    # the gradient on the batch; the chunk's forward pass and its backward pass that keeps the graph
    assert (d["n_grad"], d["n_loss"], d["n_hvp"]) == (1.0, 0.5, 0.5)
    assert d["grad_equivalents"] == pytest.approx(1.0 + 0.5 / 3 + 0.5)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_newton_cg_counts_follow_the_prices(curvature: str) -> None:
    model, x, y = _problem()
    prices = {"hessian_gradient": 1.6, "curvature_setup": 0.7, "product": 1.8, "batch_loss": 0.45}
    opt = NewtonCG(model.parameters(), curvature=curvature, cg_max_iter=6)
    opt.costs = CostMeter(prices=prices)
    d = _step(opt, model, x, y)
    first = 1.6 if curvature == "hessian" else 1.0 + 0.7  # the Hessian's gradient; or a gradient and the GGN
    products = d["n_hvp"] - (curvature == "ggn")
    assert products >= d["cg_iters"] >= 1
    assert d["grad_equivalents"] == pytest.approx(first + 1.8 * products + 0.45 * d["n_loss"])


def test_saddle_free_newton_prices_its_lanczos_products() -> None:
    model, x, y = _problem()
    opt = SaddleFreeNewton(model.parameters(), lanczos_iter=7, rank=3, refresh_every=2)
    opt.costs = CostMeter(prices={"hessian_gradient": 1.5, "product": 1.9})
    costs = [_step(opt, model, x, y)["grad_equivalents"] for _ in range(3)]
    assert costs == pytest.approx([1.5 + 7 * 1.9, 1.0, 1.5 + 7 * 1.9])


@pytest.mark.parametrize("estimator", ["hutchinson", "gnb"])
def test_diagonal_estimators_count_at_their_prices(estimator: str) -> None:
    model, x, y = _problem()
    opt = Sophia(model.parameters(), estimator=estimator, hessian_refresh=2, n_probes=2)
    opt.costs = CostMeter(prices={"hessian_gradient": 1.5, "product": 1.75, "gnb_probe": 0.4})
    costs = [_step(opt, model, x, y)["grad_equivalents"] for _ in range(2)]
    refresh = 1.5 + 2 * 1.75 if estimator == "hutchinson" else 1.0 + 2 * 0.4
    assert costs == pytest.approx([refresh, 1.0])


def test_lbfgs_prices_its_hessian_scaling() -> None:
    model, x, y = _problem()
    opt = LBFGS(model.parameters(), initial_scaling="hvp", max_iter=4, line_search="none", lr=0.5)
    opt.costs = CostMeter(prices={"hessian_gradient": 1.5, "product": 2.0})
    d = _step(opt, model, x, y)
    scalings = d["n_hvp"]  # each a gradient whose graph is kept and one product
    assert scalings >= 1
    assert d["grad_equivalents"] == pytest.approx(d["n_grad"] - scalings + scalings * (1.5 + 2.0))


def test_a_price_is_measured_once_at_its_first_use() -> None:
    model, x, y = _problem()
    opt = AdaHessian(model.parameters())
    opt.costs = CostMeter(timer=Ticks())
    first, second = _step(opt, model, x, y), _step(opt, model, x, y)
    assert first["price_hessian_gradient"] == pytest.approx(1.0) and first["price_product"] == pytest.approx(1.0)
    assert not any(key.startswith(("price_", "calibration")) for key in second)
    assert opt.costs.prices == {"hessian_gradient": 1.0, "product": 1.0}
    assert second["grad_equivalents"] == pytest.approx(2.0)


# -- calibration changes counts, never the arithmetic


class Regularised(nn.Module):
    """BatchNorm (running statistics move on a forward pass) and dropout (draws masks)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


MAKERS: dict[str, Callable[[Iterator[nn.Parameter]], CurvatureOptimizer]] = {
    "newton_cg_ggn": lambda p: NewtonCG(p, cg_max_iter=5),
    "newton_cg_hessian_chunk": lambda p: NewtonCG(p, curvature="hessian", curvature_fraction=0.5, cg_max_iter=5),
    "hessian_free": lambda p: HessianFree(p, cg_max_iter=5),
    "saddle_free_newton": lambda p: SaddleFreeNewton(p, lanczos_iter=4, rank=2),
    "adahessian": lambda p: AdaHessian(p),
    "sophia_gnb": lambda p: Sophia(p, hessian_refresh=1),
    "sophia_hutchinson": lambda p: Sophia(p, hessian_refresh=1, estimator="hutchinson"),
}


WORK = ("n_grad", "n_hvp", "n_loss", "cg_iters", "ls_evals")


@pytest.mark.filterwarnings("ignore:.*dropout is active", "ignore:HessianFree. no per-layer statistics")
@pytest.mark.parametrize("name", list(MAKERS))
def test_calibration_changes_the_counts_never_the_arithmetic(name: str) -> None:
    torch.manual_seed(0)
    base = Regularised().double()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (32,), generator=g)
    runs = []
    for meter in (CostMeter(calibrate=False), CostMeter(timer=Ticks())):
        model = copy.deepcopy(base)
        opt = MAKERS[name](model.parameters())
        opt.costs = meter
        torch.manual_seed(1)  # the dropout masks' stream
        work = [{k: v for k, v in _step(opt, model, x, y).items() if k in WORK} for _ in range(3)]
        runs.append((model.state_dict(), torch.random.get_rng_state(), opt.state_dict()["state"], work))
    (plain, plain_rng, plain_state, plain_work), (calibrated, calibrated_rng, calibrated_state, calibrated_work) = runs
    assert meter.prices  # the second run measured
    assert plain_work == calibrated_work  # the calibration's own work is not the step's
    for key in plain:
        assert torch.equal(plain[key], calibrated[key]), key  # parameters and BatchNorm's running statistics
    assert torch.equal(plain_rng, calibrated_rng)
    assert repr(plain_state) == repr(calibrated_state) or _same_state(plain_state, calibrated_state)


def _same_state(a: object, b: object) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_state(u, v) for u, v in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# -- the matrix methods time their work to its end on the device


def test_matrix_methods_charge_their_work_as_the_device_clock_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([10.0, 10.5])  # the update's start and end, on the device's clock
    monkeypatch.setattr(MATRIX_MODULE, "device_clock", lambda device: next(readings))
    model, x, y = _problem()
    opt = Shampoo(model.parameters())
    d = _step(opt, model, x, y)
    grad_seconds = opt.global_state["mean_grad_seconds"]
    assert d["overhead_grad_equivalents"] == pytest.approx(0.5 / grad_seconds)
    assert d["work_seconds"] == pytest.approx(0.5)
