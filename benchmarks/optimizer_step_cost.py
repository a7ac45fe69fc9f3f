"""Optimizer step cost, measured side by side in one run.

* hpo2 ``LBFGS`` against ``torch.optim.LBFGS`` with the same settings (fixed step
  and strong Wolfe), one ``step`` call of ``max_iter`` inner iterations on a
  full batch: the ratio of median seconds (goal: at most 1.0).
* Every registered optimizer (and the variants that change its work per step):
  the measured wall time of a step in gradients (each step timed back to back
  with one gradient on the same batch, the unit), the gradient-equivalents it
  counts (its diagnostics, at the prices it measured on its first steps; 1 for a
  first-order step, as the training loop counts), and measured / counted (goal:
  within 1.3x either way).  Two tables: a training set of 8192, so that the data
  regimes that ask for a larger batch (Hessian-free's ``"full"``) get one, and the
  small network of issue 28, where every optimizer at its defaults steps on the
  task's batch of 1024 (a curvature product's time is mostly fixed there); and
  (``--tables transformer``) the ``byte_gpt`` transformer of issue 24.

The load average before and after is printed under the tables: on a shared
machine the measured column moves with it.

Run: ``python benchmarks/optimizer_step_cost.py [--repeats 15] [--tables small transformer] [--no-write]``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import _timed, paired_ratio, publish, synchronize  # noqa: E402

from hpo2.optim import LBFGS, BatchClosure, from_config, take_snapshot, take_step  # noqa: E402
from hpo2.optim.registry import REGISTRY  # noqa: E402
from hpo2.tasks import build_task  # noqa: E402
from hpo2.train import resolve_batch_size


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
        rows.append(
            f"| LBFGS ({line_search}), 10 inner iterations | {t_ours * 1e3:.2f} "
            f"| {ratio:.2f} (hpo2 / torch.optim.LBFGS) | - |"
        )
    return rows


# every registered optimizer at its defaults, plus the variants that change the work per step
VARIANTS: list[tuple[str, dict[str, object]]] = [
    *((name, {}) for name in REGISTRY),
    ("newton_cg", {"curvature": "hessian"}),
    ("newton_cg", {"curvature": "ggn", "globalization": "trust_region"}),
    ("newton_cg", {"curvature_fraction": 0.1}),  # Gauss-Newton on a chunk (issue 28)
    ("newton_cg", {"curvature": "hessian", "curvature_fraction": 0.1}),  # its create_graph backward (issue 25)
    ("hessian_free", {"curvature_fraction": 1.0}),
    ("hessian_free", {"batch_size": None, "curvature_fraction": 1.0, "cg_max_iter": 50}),  # the pre-issue-12 row
    ("hessian_free", {"evaluation_batch": "gradient"}),
    ("sophia", {"estimator": "hutchinson"}),
    ("sgd", {"sam": {"rho": 0.05}}),
    ("newton_cg", {"sam": {"rho": 0.05}}),
]


def _step_fn(
    optimizer: torch.optim.Optimizer, model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], float]:
    """One step as the training loop takes it, and its counted gradient-equivalents."""
    closure = BatchClosure(model, loss_fn, x, y)
    take_snapshot(optimizer, lambda: closure, len(x))  # SVRG: the loop takes its snapshot at epoch starts, not per step

    def one_step() -> float:
        return float(take_step(optimizer, closure)[1]["grad_equivalents"])  # as hpo2.train counts it

    return one_step


TRAINING_SET = 8192  # the "training set" an optimizer with batch_size="full" takes
TRANSFORMER_TRAINING_SET = 256  # byte_gpt windows: a "full" batch of 256 x 128 bytes
SMALL_TRAINING_SET = 1024  # issue 28: every optimizer's batch is the task's 1024, Hessian-free's "full" too
# the warm-up steps before timing: the first step also measures the step's prices (hpo2.optim.costs)
WARMUP_STEPS = 2


@dataclass(frozen=True)
class Workload:
    """A model, the training set a step's batch is cut from, the loss and the task's batch size."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: nn.Module
    task_batch: int


def mlp_workload(device: torch.device, training_set: int) -> Workload:
    """The MLP 64-128-10 of :func:`problem` on a random training set of ``training_set``."""
    base, _, _ = problem(device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(training_set, 64, generator=generator).to(device)
    y = torch.randint(0, 10, (training_set,), generator=generator).to(device)
    return Workload(base, x, y, nn.CrossEntropyLoss(), 1024)


def transformer_workload(device: torch.device) -> Workload:
    """``byte_gpt`` at its default size (1.3M parameters, context 128) on its first
    :data:`TRANSFORMER_TRAINING_SET` training windows, its batch of 32 (issue 24)."""
    task = build_task("byte_gpt")
    x, y = task.train.x[:TRANSFORMER_TRAINING_SET], task.train.y[:TRANSFORMER_TRAINING_SET]
    return Workload(task.model.to(device), x.to(device), y.to(device), task.loss_fn, task.batch_size)


def counted_rows(device: torch.device, repeats: int, workload: Workload,
                 variants: list[tuple[str, dict[str, object]]]) -> list[str]:
    """Measured gradients of wall time per step, counted gradient-equivalents, their
    ratio; each step timed back to back with one gradient on the same batch (the
    batch the optimizer's data regime asks for, as hpo2.train gives it).  An
    optimizer that refuses the workload gets a row saying why."""
    rows = []
    unit_model = copy.deepcopy(workload.model)
    loss_fn = workload.loss_fn
    for name, settings in variants:
        model = copy.deepcopy(workload.model)
        described = " " + ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else ""
        try:
            optimizer = from_config({"name": name, "settings": settings}, model)
        except (ValueError, TypeError) as error:  # e.g. an optimizer that cannot precondition this model
            rows.append(f"| {name}{described} | refused: {str(error).splitlines()[0][:100]} | - | - | - |")
            continue
        size = resolve_batch_size(optimizer, workload.task_batch, len(workload.x))
        x, y = workload.x[:size], workload.y[:size]

        def gradient() -> None:
            torch.autograd.grad(loss_fn(unit_model(x), y), list(unit_model.parameters()))
        step = _step_fn(optimizer, model, loss_fn, x, y)
        for _ in range(WARMUP_STEPS):
            step()
            gradient()
        units, counted, seconds = [], [], []
        for _ in range(repeats):
            t_unit = _timed(gradient, device)
            start = time.perf_counter()
            count = step()
            synchronize(device)
            t_step = time.perf_counter() - start
            seconds.append(t_step)
            units.append(t_unit)
            counted.append(count)
        # Means over the steps, not medians: the matrix and Kronecker methods refresh
        # their preconditioners every 10-100 steps, and those steps must be paid for.
        m, c = sum(seconds) / sum(units), statistics.fmean(counted)
        label = name + described + f" (batch {size})"
        rows.append(f"| {label} | {statistics.median(seconds) * 1e3:.2f} | {m:.2f} | {c:.2f} | {m / c:.2f} |")
    return rows


def load_average() -> str:
    """The 1-minute load average and the CPU count, for the notes under a table."""
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else "unknown"


def counted_header(what: str) -> list[str]:
    return ["", f"| optimizer step ({what}), defaults unless stated | median ms "
                "| measured (gradients of wall time, mean) | counted (grad_equivalents) | measured / counted |",
            "| --- | ---: | ---: | ---: | ---: |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--repeats", type=int, default=40, help="steps per optimizer (periodic refreshes are amortized over them)"
    )
    parser.add_argument("--tables", nargs="+", choices=("lbfgs", "large", "small", "transformer"),
                        default=["lbfgs", "large", "small"],
                        help="which tables: L-BFGS against torch's, training set 8192, the small network of issue 28, "
                             "byte_gpt (issue 24)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: a shared machine's other jobs then stall no thread of ours)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    before = load_average()
    lines: list[str] = []
    if "lbfgs" in args.tables:
        lines += ["| L-BFGS step (MLP 64-128-10, batch 1024) | median ms | ratio | - |", "| --- | ---: | --- | ---: |"]
        lines += lbfgs_rows(device, args.repeats)
    if "large" in args.tables:
        lines += counted_header(f"MLP 64-128-10, task batch 1024, training set {TRAINING_SET}")
        lines += counted_rows(device, args.repeats, mlp_workload(device, TRAINING_SET), VARIANTS)
    if "small" in args.tables:
        lines += counted_header(f"small network: MLP 64-128-10, batch {SMALL_TRAINING_SET} for every optimizer")
        lines += counted_rows(device, args.repeats, mlp_workload(device, SMALL_TRAINING_SET),
                              [(name, {}) for name in REGISTRY])
    if "transformer" in args.tables:
        lines += counted_header(f"byte_gpt transformer, 1.3M parameters, batch 32 x 128 bytes, "
                                f"training set {TRANSFORMER_TRAINING_SET} windows")
        lines += counted_rows(device, args.repeats, transformer_workload(device), [(name, {}) for name in REGISTRY])
    table = "\n".join(lines).strip("\n")
    notes = f"Load average before: {before}; after: {load_average()}."
    publish(f"Optimizer step cost ({device.type})", table, device, write=not args.no_write, notes=notes,
            raw_name="optimizer_step_cost", raw={"repeats": args.repeats, "table": lines, "load": notes})
    print(notes)


if __name__ == "__main__":
    main()
