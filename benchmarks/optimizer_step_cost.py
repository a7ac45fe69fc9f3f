"""Optimizer step cost, measured side by side in one run.

* hpo2 ``LBFGS`` against ``torch.optim.LBFGS`` with the same settings (fixed step
  and strong Wolfe), one ``step`` call of ``max_iter`` inner iterations on a
  full batch: the ratio of median seconds (goal: at most 1.0).
* Newton-CG, Hessian-free, SVRG (after a snapshot on the batch) and SAM over SGD
  and Newton-CG: seconds per step and gradient-equivalents per step (from the
  optimizers' own diagnostics), with the seconds of one gradient on the same
  batch as the unit.

Run: ``python benchmarks/optimizer_step_cost.py [--repeats 15] [--no-write]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, median_seconds, paired_ratio  # noqa: E402

from hpo2.optim import LBFGS, SAM, SVRG, BatchClosure, HessianFree, NewtonCG  # noqa: E402


def problem(device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10)).to(device)
    x = torch.randn(1024, 64, device=device)
    y = torch.randint(0, 10, (1024,), device=device)
    return model, x, y


def lbfgs_rows(device: torch.device, repeats: int) -> list[str]:
    rows = []
    base, x, y = problem(device)
    loss_fn = nn.CrossEntropyLoss()
    for line_search in ("none", "strong_wolfe"):
        ours_model, ref_model = copy.deepcopy(base), copy.deepcopy(base)
        ours = LBFGS(ours_model.parameters(), max_iter=10, history_size=10, line_search=line_search, lr=0.5,
                     tolerance_grad=0.0, tolerance_change=0.0)
        ref = torch.optim.LBFGS(ref_model.parameters(), max_iter=10, history_size=10, lr=0.5, tolerance_grad=0.0,
                                tolerance_change=0.0, line_search_fn=None if line_search == "none" else "strong_wolfe")
        closure = BatchClosure(ours_model, loss_fn, x, y)

        def ref_closure() -> torch.Tensor:
            ref.zero_grad()
            loss = loss_fn(ref_model(x), y)
            loss.backward()
            return loss

        t_ours, ratio = paired_ratio(lambda: ours.step(closure), lambda: ref.step(ref_closure), device, repeats)
        rows.append(f"| LBFGS ({line_search}), 10 inner iterations | {t_ours * 1e3:.2f} | {ratio:.2f} (hpo2 / torch.optim.LBFGS) | - |")
    return rows


def second_order_rows(device: torch.device, repeats: int) -> list[str]:
    rows = []
    base, x, y = problem(device)
    loss_fn = nn.CrossEntropyLoss()
    unit_model = copy.deepcopy(base)
    t_grad = median_seconds(lambda: torch.autograd.grad(loss_fn(unit_model(x), y), list(unit_model.parameters())), device, repeats)
    makers = {
        "NewtonCG (Hessian, cg_max_iter 20)": lambda p: NewtonCG(p, damping=1e-2, cg_max_iter=20),
        "NewtonCG (GGN, cg_max_iter 20)": lambda p: NewtonCG(p, damping=1e-2, cg_max_iter=20, curvature="ggn"),
        "HessianFree (cg_max_iter 50)": lambda p: HessianFree(p, cg_max_iter=50),
        "SVRG": lambda p: SVRG(p, lr=0.01),
        "SAM + SGD": lambda p: SAM(torch.optim.SGD(p, lr=0.01), rho=0.05),
        "SAM + NewtonCG (Hessian, cg_max_iter 20)": lambda p: SAM(NewtonCG(p, damping=1e-2, cg_max_iter=20), rho=0.05),
    }
    for label, make in makers.items():
        model = copy.deepcopy(base)
        opt = make(model.parameters())
        closure = BatchClosure(model, loss_fn, x, y)
        if isinstance(opt, SVRG):
            opt.snapshot(closure, len(x))
        seconds, grad_eq = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            opt.step(closure)
            seconds.append(time.perf_counter() - start)
            grad_eq.append(float(opt.diagnostics["grad_equivalents"]))
        s = statistics.median(seconds)
        rows.append(f"| {label} | {s * 1e3:.2f} | {s / t_grad:.1f} gradients of wall time | {statistics.median(grad_eq):.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    lines = ["| optimizer step (MLP 64-128-10, batch 1024) | median ms | ratio | grad-equivalents per step (diagnostics) |",
             "| --- | ---: | --- | ---: |"]
    lines += lbfgs_rows(device, args.repeats) + second_order_rows(device, args.repeats)
    table = "\n".join(lines)
    publish(f"Optimizer step cost ({device.type})", table, device, write=not args.no_write)


if __name__ == "__main__":
    main()
