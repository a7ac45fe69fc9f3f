"""The contract every registered optimizer keeps, one test per clause, parametrized over
``hpo2.optim.REGISTRY`` (as Optuna's ``parametrize_sampler`` runs one contract over every
sampler): an optimizer registered tomorrow is checked here without being listed.

* ``state_dict`` round trip: save, load into a fresh optimizer over a fresh model, and
  the next steps are bit-identical to the uninterrupted run.
* Every optimizer is stepped, and snapshot, as the training loop does it: by
  :func:`hpo2.optim.take_step` and :func:`hpo2.optim.take_snapshot`, the one dispatch both share.
* The step contract (:meth:`hpo2.optim.base.LoopOptimizer.step`): ``help(type(opt).step)``
  shows it, and the step returns the loss at its starting parameters, detached, 0-d, on the
  parameters' device, equal to ``diagnostics["loss"]``.
* Non-finite loss or gradient (``hpo2.optim.base``): the step is rejected with status
  ``nonfinite_loss`` / ``nonfinite_grad`` and the parameters are unchanged;
  ``raise_on_nonfinite=True`` raises ``FloatingPointError`` instead (the first-order
  baselines skip the step on a non-finite loss or gradient).
* Diagnostics: the documented keys are present and finite after every step, and the
  work is reported in ``grad_equivalents`` (at least the step's gradient on its batch:
  other work is priced as measured, hpo2.optim.costs, so a cheap probe may cost less
  than the gradient it is counted as in ``n_grad``).
* Device: parameters and every state tensor stay on the parameters' device (the
  ``cuda`` variants run where a GPU is present).
* The README's own loop (``from_config``, ``schedule_from_config``, then
  ``optimizer.step(BatchClosure(...))`` and ``schedule.step()`` over a ``DataLoader``)
  trains every registered optimizer, or it refuses with an error that says what to do.
"""

from __future__ import annotations

import copy
import inspect
import math
import pydoc
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from hpo2.optim import REGISTRY, BatchClosure, from_config, schedule_from_config, take_snapshot, take_step
from hpo2.optim.base import CurvatureOptimizer, LoopOptimizer
from hpo2.optim.sam import SAM
from tests.conftest import DEVICES
from tests.problems import classification_batch, classification_mlp

# Settings under which three steps on a 5-8-3 MLP already exercise each optimizer's
# state (curvature refreshes, preconditioner updates, CG warm starts) and stay fast; an
# optimizer not named here runs with its paper defaults.
QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "newton_cg": {"damping": 1e-2, "cg_max_iter": 10},
    "hessian_free": {"cg_max_iter": 20, "curvature_fraction": 1.0},
    "lbfgs": {"max_iter": 3, "history_size": 4},
    "adahessian": {"lr": 0.05, "hessian_refresh": 2},
    "sophia": {"lr": 0.01, "hessian_refresh": 2},
    "shampoo": {"lr": 0.01, "precondition_frequency": 2, "start_preconditioning_step": 2},
    "soap": {"lr": 0.01, "precondition_frequency": 2},
    "saddle_free_newton": {"rank": 4, "refresh_every": 2},
    "kfac": {"lr": 0.05, "cov_update_every": 2, "inverse_update_every": 3},
}
# Other code paths of registered optimizers, and SAM (a wrapper, not registered itself).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "newton_cg-trust_region": ("newton_cg", {**QUICK_SETTINGS["newton_cg"], "globalization": "trust_region"}),
    "sophia-hutchinson": ("sophia", {**QUICK_SETTINGS["sophia"], "estimator": "hutchinson"}),
    "kfac-empirical": ("kfac", {**QUICK_SETTINGS["kfac"], "fisher": "empirical"}),
    "sam-newton_cg": ("newton_cg", {**QUICK_SETTINGS["newton_cg"], "sam": {"rho": 0.05}}),
    "sam-adam": ("adam", {"sam": {"rho": 0.05}}),
}
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (name, QUICK_SETTINGS.get(name, {})) for name in REGISTRY},
    **VARIANTS,
}
# Documented in hpo2.optim.base (hpo2's optimizers), hpo2.optim.sam (SAM over any base) and by
# hpo2.optim.baselines.first_order_closure_step (the torch.optim baselines).
CURVATURE_KEYS = {"loss", "grad_norm", "status", "n_grad", "n_hvp", "n_loss", "grad_equivalents"}
SAM_KEYS = {"loss", "grad_norm", "status", "n_grad", "grad_equivalents", "sam_perturbed_loss"}
FIRST_ORDER_KEYS = {"loss", "status", "grad_equivalents"}


def build(case: str, params: Any) -> torch.optim.Optimizer:
    name, settings = CASES[case]
    return from_config({"name": name, "settings": settings}, params)


def step(opt: torch.optim.Optimizer, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    """One step as :func:`hpo2.train.run_training` takes it; the step's diagnostics."""
    return take_step(opt, BatchClosure(model, loss_fn, x, y))[1]


def start(opt: torch.optim.Optimizer, model: nn.Module, loss_fn: nn.Module, x: Tensor, y: Tensor) -> None:
    """The epoch-start snapshot, as the loop takes it before an epoch (SVRG's; none for the rest)."""
    take_snapshot(opt, lambda: BatchClosure(model, loss_fn, x, y), len(x))


def state_tensors(state: Any) -> Iterator[tuple[str, Tensor]]:
    """Every tensor in an optimizer state (nested dicts, lists, tuples), with its key path."""
    if isinstance(state, Tensor):
        yield "", state
    elif isinstance(state, dict):
        for key, value in state.items():
            for path, tensor in state_tensors(value):
                yield f"{key}.{path}".rstrip("."), tensor
    elif isinstance(state, list | tuple):
        for i, value in enumerate(state):
            for path, tensor in state_tensors(value):
                yield f"{i}.{path}".rstrip("."), tensor


def test_every_named_setting_belongs_to_a_registered_optimizer() -> None:
    assert set(QUICK_SETTINGS) <= set(REGISTRY)
    for case in CASES:
        build(case, classification_mlp().parameters())  # settings valid for that optimizer


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trip_resumes_identically(case: str) -> None:
    x, y = classification_batch()
    loss_fn = nn.CrossEntropyLoss()
    model = classification_mlp()
    opt = build(case, model.parameters())
    start(opt, model, loss_fn, x, y)
    for _ in range(3):
        step(opt, model, loss_fn, x, y)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for _ in range(3):
        step(opt, model, loss_fn, x, y)

    resumed = classification_mlp(seed=99)
    resumed.load_state_dict(saved_model)
    opt2 = build(case, resumed.parameters())
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        step(opt2, resumed, loss_fn, x, y)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


class InfiniteCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy times infinity: a non-finite loss."""

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return super().forward(outputs, targets) * math.inf


class NaNGradientCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy plus ``0 * sqrt(|z - z|)``: the value is finite, the gradient NaN
    (``0 * d sqrt(u)/du`` at ``u = 0`` is ``0 * inf``)."""

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return super().forward(outputs, targets) + 0.0 * (outputs - outputs.detach()).abs().sqrt().sum()


@pytest.mark.parametrize("case", list(CASES))
def test_non_finite_loss_rejects_the_step_and_keeps_params(case: str) -> None:
    x, y = classification_batch()
    model = classification_mlp()
    opt = build(case, model.parameters())
    start(opt, model, nn.CrossEntropyLoss(), x, y)
    before = [p.detach().clone() for p in model.parameters()]
    diag = step(opt, model, InfiniteCrossEntropy(), x, y)
    assert diag["status"] in ("nonfinite_loss", "nonfinite_grad")
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a.detach(), b)
    if isinstance(opt, CurvatureOptimizer):
        strict = type(opt)(model.parameters(), **opt.settings.model_dump(), raise_on_nonfinite=True)
        start(strict, model, nn.CrossEntropyLoss(), x, y)
        with pytest.raises(FloatingPointError, match="non"):
            strict.step(BatchClosure(model, InfiniteCrossEntropy(), x, y))


@pytest.mark.parametrize("case", list(CASES))
def test_non_finite_gradient_rejects_the_step_and_keeps_params(case: str) -> None:
    x, y = classification_batch()
    model = classification_mlp()
    opt = build(case, model.parameters())
    start(opt, model, nn.CrossEntropyLoss(), x, y)
    before = [p.detach().clone() for p in model.parameters()]
    diag = step(opt, model, NaNGradientCrossEntropy(), x, y)
    assert diag["status"] == "nonfinite_grad"
    for a, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(a.detach(), b)


# a step warns about nothing (torch's scalar-conversion warning leaked)
@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_each_step_reports_finite_diagnostics_and_its_work_and_lowers_the_loss(case: str) -> None:
    x, y = classification_batch()
    loss_fn = nn.CrossEntropyLoss()
    model = classification_mlp()
    opt = build(case, model.parameters())
    keys = (
        SAM_KEYS
        if isinstance(opt, SAM)
        else CURVATURE_KEYS
        if isinstance(opt, CurvatureOptimizer)
        else FIRST_ORDER_KEYS
    )
    with torch.no_grad():
        first = float(loss_fn(model(x), y))
    start(opt, model, loss_fn, x, y)
    for _ in range(5):
        diag = step(opt, model, loss_fn, x, y)
        assert keys <= set(diag), keys - set(diag)
        numbers = {k: v for k, v in diag.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        assert all(math.isfinite(v) for v in numbers.values()), numbers
        assert diag["grad_equivalents"] >= 1 and diag.get("n_grad", 1) >= 1
    with torch.no_grad():
        assert float(loss_fn(model(x), y)) < first
    if CASES[case][0] in ("newton_cg", "hessian_free") and "sam" not in CASES[case][1]:
        assert {"damping", "cg_iters", "cg_stop", "negative_curvature"} <= set(diag)
        assert diag["n_hvp"] >= diag["cg_iters"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_params_and_state_stay_on_the_params_device(case: str, device: str) -> None:
    x, y = (t.to(device) for t in classification_batch())
    loss_fn = nn.CrossEntropyLoss()
    model = classification_mlp().to(device)
    opt = build(case, model.parameters())
    start(opt, model, loss_fn, x, y)
    for _ in range(3):
        step(opt, model, loss_fn, x, y)
    dev = torch.device(device)
    assert all(p.device.type == dev.type for p in model.parameters())
    for path, tensor in state_tensors(opt.state_dict()):
        # torch.optim keeps its scalar step counters on the CPU (documented; not for fused/capturable)
        on_cpu_by_design = path.endswith("step") and tensor.dim() == 0
        assert tensor.device.type == dev.type or on_cpu_by_design, (path, tensor.device)


@pytest.mark.parametrize("case", list(CASES))
def test_help_on_step_shows_the_contract(case: str) -> None:
    """``help(type(opt).step)`` is the contract written once on the root class, not torch's
    "Optional for most optimizers" nor an optimizer's own variant."""
    contract = inspect.getdoc(LoopOptimizer.step)
    assert contract is not None and "Returns:" in contract and "Raises:" in contract
    step_method = type(build(case, classification_mlp().parameters())).step
    assert inspect.getdoc(step_method) == contract
    assert contract.splitlines()[0] in pydoc.render_doc(step_method, renderer=pydoc.plaintext)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_step_returns_the_detached_starting_loss_on_the_params_device(case: str, device: str) -> None:
    x, y = (t.to(device) for t in classification_batch())
    loss_fn = nn.CrossEntropyLoss()
    model = classification_mlp().to(device)
    param = next(model.parameters())
    opt = build(case, model.parameters())
    start(opt, model, loss_fn, x, y)
    for _ in range(3):
        with torch.no_grad():
            at_start = loss_fn(model(x), y)
        loss, diag = take_step(opt, BatchClosure(model, loss_fn, x, y))
        assert (loss.device, loss.dtype, loss.dim()) == (param.device, param.dtype, 0)
        assert not loss.requires_grad and loss.grad_fn is None
        assert torch.equal(loss, at_start)
        assert loss.item() == diag["loss"]


# Paper-default Adam (lr 1e-3) moves this MLP's loss by under 1% in 20 steps; these rates make each step count.
README_LOOP_SETTINGS = {"sgd": {"lr": 0.1}, "adam": {"lr": 0.01}, "adamw": {"lr": 0.01}}
# Optimizers the README loop cannot drive alone, and the words of their refusal.
REFUSES_THE_README_LOOP = {"svrg": "needs optimizer.snapshot"}


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_readme_loop_trains_every_optimizer_or_refuses_clearly(name: str) -> None:
    """20 steps of the README's loop, a schedule included, lower the loss; a plain torch optimizer
    given hpo2's closure (it returns the loss, no backward) would leave it where it was."""
    x, y = classification_batch()
    model = classification_mlp()
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        before = float(loss_fn(model(x), y))
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    settings = {**QUICK_SETTINGS.get(name, {}), **README_LOOP_SETTINGS.get(name, {}), "schedule": {"warmup": 0.1}}
    config = {"name": name, "settings": settings}
    optimizer = from_config(config, model.parameters())
    schedule = schedule_from_config(config, optimizer, total_steps=20)
    assert schedule is not None
    if name in REFUSES_THE_README_LOOP:
        with pytest.raises(ValueError, match=REFUSES_THE_README_LOOP[name]):
            optimizer.step(BatchClosure(model, loss_fn, x, y))
        return
    for _ in range(5):
        for xb, yb in loader:
            optimizer.step(BatchClosure(model, loss_fn, xb, yb))
            schedule.step()
            assert math.isfinite(optimizer.diagnostics["loss"])
    with torch.no_grad():
        after = float(loss_fn(model(x), y))
    assert after < 0.99 * before, (before, after)
