"""Kronecker preconditioner overhead: the share of a step's wall time that K-FAC,
Shampoo and SOAP spend on their preconditioners, at their default settings.

Workloads (random data of the tasks' shapes: only wall time is measured):

* ``fmnist_mlp``: the ReLU MLP 784-1000-500-100-10 on a batch of 128 (its
  1000 x 784 first layer dominates);
* ``byte_gpt``: the task's GPT at its default size (width 160, depth 4, 4 heads,
  context 128, 1.34M parameters) on a batch of 32 windows.

Per step the optimizer reports ``work_seconds`` (everything it does besides its
gradients: factor products, refreshes, applying the preconditioner, and its Adam,
grafting or fallback moments -- so the "preconditioner work" column is an upper
bound; AdamW's own update, the reference row, is what a first-order step spends)
and ``inverse_seconds`` (the refresh: ``eigh``, inverse roots, power iteration).
A refresh happens every ``inverse_update_every`` / ``precondition_frequency``
steps and K-FAC's factor update every ``cov_update_every``, so the figures are
**amortized**: the median over the measured steps of each kind (a factor-update
step or not, the refresh's own seconds taken out) weighted by how often that kind
occurs, plus the median refresh divided by its interval.  The fraction is
amortized work / amortized step.

Measured steps: ``--steps`` of them, Shampoo's from its ``start_preconditioning_step``
on (before it, Shampoo steps with Adam), SOAP's and K-FAC's from the second step
(the first only builds the factors); SOAP's run on to its first refresh.  K-FAC
refreshes at its first step and then every 100: its step counter is moved so that
the last measured step is a refresh step (its factors then hold the run's
statistics, not one batch's).

Reference columns, in the same process: the plain gradient of the same model and
batch (timed back to back with every step) and AdamW's (torch) own step, the
work a first-order method does.

Run: ``python benchmarks/kronecker_overhead.py [--steps 8] [--workloads fmnist_mlp byte_gpt] [--no-write]``
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
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import _timed, publish, synchronize  # noqa: E402

from hpo2.optim import BatchClosure, from_config  # noqa: E402
from hpo2.tasks.base import mlp  # noqa: E402
from hpo2.tasks.gpt import GPT  # noqa: E402

METHODS = ("kfac", "shampoo", "soap")
GOAL = 0.25


@dataclass(frozen=True)
class Workload:
    name: str
    model: nn.Module
    x: Tensor
    y: Tensor


def workloads(names: list[str], device: torch.device) -> list[Workload]:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    built = {
        "fmnist_mlp": lambda: Workload(
            "fmnist_mlp (batch 128)", mlp([784, 1000, 500, 100, 10]),
            torch.randn(128, 784, generator=generator), torch.randint(0, 10, (128,), generator=generator)),
        "byte_gpt": lambda: Workload(
            "byte_gpt (batch 32 x 128 bytes)", GPT(256, 128, 160, 4, 4),
            torch.randint(0, 256, (32, 128), generator=generator),
            torch.randint(0, 256, (32, 128), generator=generator)),
    }  # fmt: skip
    out = []
    for name in names:
        w = built[name]()
        out.append(Workload(w.name, w.model.to(device), w.x.to(device), w.y.to(device)))
    return out


@dataclass
class StepRecord:
    wall: float
    work: float
    refresh: float
    factor_update: bool


def first_measured_step(method: str, defaults: dict[str, object]) -> int:
    if method == "shampoo":
        return int(defaults["start_preconditioning_step"])  # type: ignore[call-overload]  # an int setting
    return 2


def refresh_interval(method: str, defaults: dict[str, object]) -> int:
    key = "inverse_update_every" if method == "kfac" else "precondition_frequency"
    return int(defaults[key])  # type: ignore[call-overload]  # an int setting


def run_method(method: str, workload: Workload, steps: int, device: torch.device) -> dict[str, float]:
    """Step ``method`` at its defaults; amortized step, work and refresh seconds, and the plain gradient's."""
    model = copy.deepcopy(workload.model)
    unit_model = copy.deepcopy(workload.model)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = from_config(method, model)
    defaults = optimizer.defaults
    closure = BatchClosure(model, loss_fn, workload.x, workload.y)
    first = first_measured_step(method, defaults)
    interval = refresh_interval(method, defaults)

    def gradient() -> None:
        torch.autograd.grad(loss_fn(unit_model(workload.x), workload.y), list(unit_model.parameters()))

    records: list[StepRecord] = []
    gradients: list[float] = []
    last = max(first + steps - 1, interval + 1 if method == "soap" else 0)  # SOAP refreshes at step interval + 1
    for t in range(1, last + 1):
        if method == "kfac" and t == last:
            optimizer.global_state["global_step"] = interval  # the next step is a refresh step
        t_grad = _timed(gradient, device)
        start = time.perf_counter()
        optimizer.step(closure)  # type: ignore[arg-type]  # hpo2 optimizers take a BatchClosure
        synchronize(device)
        wall = time.perf_counter() - start
        d = optimizer.diagnostics  # type: ignore[attr-defined]  # hpo2 optimizers have diagnostics
        if t < first:
            continue
        gradients.append(t_grad)
        refresh = float(d.get("inverse_seconds", 0.0))
        records.append(StepRecord(wall, float(d["work_seconds"]), refresh, bool(d.get("cov_updated", 0))))
    cov_weight = 1 / int(defaults["cov_update_every"]) if method == "kfac" else 0.0  # type: ignore[call-overload]
    refreshes = [r.refresh for r in records if r.refresh > 0]
    if not refreshes:
        raise RuntimeError(f"{method}: no refresh among the measured steps; raise --steps")
    refresh = statistics.median(refreshes) / interval

    def amortized(value: Callable[[StepRecord], float]) -> float:
        total = 0.0
        for is_update, weight in ((True, cov_weight), (False, 1 - cov_weight)):
            values = [value(r) - r.refresh for r in records if r.factor_update == is_update]
            if weight > 0:
                total += weight * statistics.median(values)
        return total + refresh

    return {
        "step": amortized(lambda r: r.wall),
        "work": amortized(lambda r: r.work),
        "refresh": refresh,
        "gradient": statistics.median(gradients),
    }


def adamw_work(workload: Workload, steps: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of torch AdamW's own step (its gradient given) and of the gradient."""
    model = copy.deepcopy(workload.model)
    optimizer = torch.optim.AdamW(model.parameters())
    loss_fn = nn.CrossEntropyLoss()

    def gradient() -> None:
        optimizer.zero_grad()
        loss_fn(model(workload.x), workload.y).backward()

    works, grads = [], []
    for _ in range(steps + 1):
        grads.append(_timed(gradient, device))
        works.append(_timed(optimizer.step, device))
    return statistics.median(works[1:]), statistics.median(grads[1:])


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workloads", nargs="+", choices=("fmnist_mlp", "byte_gpt"), default=["fmnist_mlp", "byte_gpt"]
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=8, help="measured steps per method (at least one refresh)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    parser.add_argument("--title", default="Kronecker preconditioner overhead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    before = load()
    lines = [
        "| workload | method | step ms | gradient ms | preconditioner work ms | of it refresh ms | work / step "
        f"| goal <= {GOAL:.0%} |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for workload in workloads(args.workloads, device):
        for method in args.methods:
            r = run_method(method, workload, args.steps, device)
            fraction = r["work"] / r["step"]
            lines.append(
                f"| {workload.name} | {method} | {r['step'] * 1e3:.1f} | {r['gradient'] * 1e3:.1f} "
                f"| {r['work'] * 1e3:.1f} | {r['refresh'] * 1e3:.1f} | {fraction:.0%} "
                f"| {'met' if fraction <= GOAL else 'missed'} |"
            )
            print(lines[-1], flush=True)
        work, grad = adamw_work(workload, args.steps, device)
        lines.append(
            f"| {workload.name} | adamw (torch; reference) | {(work + grad) * 1e3:.1f} | {grad * 1e3:.1f} "
            f"| {work * 1e3:.1f} (its update) | - | {work / (work + grad):.0%} | - |"
        )
        print(lines[-1], flush=True)
    notes = (
        f"Amortized over the refresh intervals (module docstring of the script); {torch.get_num_threads()} "
        f"torch thread(s); load average before: {before}, after: {load()} on {os.cpu_count()} CPUs."
    )
    publish(args.title, "\n".join(lines), device, write=not args.no_write, notes=notes,
            raw_name="kronecker_overhead", raw={"table": lines, "notes": notes})  # fmt: skip
    print(notes)


if __name__ == "__main__":
    main()
