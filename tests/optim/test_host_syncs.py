"""One step of the CG- and line-search-based optimizers reads the device a handful of
times (issue 18): the counts before the change are in BENCHMARKS.md (Newton-CG 89,
Hessian-free 58, L-BFGS 997 on benchmarks/host_syncs.py's problem).  The pins hold
CG to an accelerator's reading policy (every 5 iterations); on the CPU it reads after
each iteration, checked here to stay at most one read per CG iteration."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from hpo2.optim import LBFGS, BatchClosure, CurvatureOptimizer, HessianFree, NewtonCG
from hpo2.solvers import DEFAULT_CHECK_EVERY
from tests.host_sync import count_host_syncs

CG_MODULE = importlib.import_module("hpo2.solvers.cg")  # the module: ``hpo2.solvers.cg`` names the function


def _problem() -> tuple[nn.Module, BatchClosure]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(128, 10, dtype=torch.float64), torch.randint(0, 3, (128,))
    return model, BatchClosure(model, nn.CrossEntropyLoss(), x, y)


# (optimizer, most conversions in one step): the CG reads (one per 5 iterations and one
# for the result), one read of loss and gradient norm, one per line-search trial, one or
# two for the step's scalars.
Make = Callable[[Iterator[nn.Parameter]], CurvatureOptimizer]
CASES: list[tuple[str, Make, int]] = [
    ("newton_cg_armijo", lambda p: NewtonCG(p, cg_max_iter=50, cg_tol=1e-6), 18),
    ("newton_cg_wolfe", lambda p: NewtonCG(p, cg_max_iter=50, cg_tol=1e-6, globalization="strong_wolfe"), 18),
    ("newton_cg_trust_region", lambda p: NewtonCG(p, cg_max_iter=50, cg_tol=1e-6, globalization="trust_region"), 8),
    ("hessian_free", lambda p: HessianFree(p, cg_max_iter=50, curvature_fraction=0.5), 18),
    ("lbfgs", lambda p: LBFGS(p, max_iter=10, history_size=10), 35),
    ("lbfgs_fixed_step", lambda p: LBFGS(p, max_iter=10, history_size=10, line_search="none", lr=0.1), 22),
]


def _count_second_step(make: Make) -> tuple[int, CurvatureOptimizer]:
    model, closure = _problem()
    opt = make(model.parameters())
    opt.step(closure)  # a warm-up step fills the history and the warm start
    before = closure().item()
    with count_host_syncs() as counter:
        opt.step(closure)
    assert closure().item() < before  # a real step was taken
    return counter.total, opt


@pytest.mark.parametrize("make, most", [(m, n) for _, m, n in CASES], ids=[name for name, _, _ in CASES])
def test_a_step_makes_a_handful_of_host_conversions(make: Make, most: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CG_MODULE, "default_check_every", lambda device: DEFAULT_CHECK_EVERY)
    total, opt = _count_second_step(make)
    assert total <= most, (total, opt.diagnostics)


@pytest.mark.parametrize("make, most", [(m, n) for _, m, n in CASES[:4]], ids=[name for name, _, _ in CASES[:4]])
def test_on_the_cpu_cg_reads_at_most_once_per_iteration(make: Make, most: int) -> None:
    total, opt = _count_second_step(make)
    assert total <= most + int(opt.diagnostics["cg_iters"]), (total, opt.diagnostics)


def test_the_counter_sees_every_kind_and_restores_torch() -> None:
    t = torch.tensor([1.5])
    with count_host_syncs() as counter:
        float(t), t.item(), bool(t), int(t), t.tolist(), [0, 1][torch.tensor(1)]
    assert counter.by_kind == {"__float__": 1, "item": 1, "__bool__": 1, "__int__": 1, "tolist": 1, "__index__": 1}
    with count_host_syncs() as counter:
        pass
    float(t)
    assert counter.total == 0 and "__float__" not in torch.Tensor.__dict__
