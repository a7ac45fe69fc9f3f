"""Device-to-host conversions per CG solve and per optimizer step (issue 18).

Each ``float(t)`` / ``t.item()`` / ``bool(t)`` / ``int(t)`` / ``t.tolist()`` waits
for a GPU to drain its queue; this counts them with the test-only counter
(``tests/host_sync.py``) on the CPU, which needs no GPU to show the round trips.

* a CG solve of 50 iterations (SPD system, float64, ``tol=0``);
* one ``step`` of every registered optimizer on a small MLP (batch 256), after
  one warm-up step (so the first-step set-up is not counted).

Two columns: CG reading its stopping rules after every iteration (the CPU's
default) and every ``DEFAULT_CHECK_EVERY`` iterations (an accelerator's default,
emulated here on the CPU).

Run: ``python benchmarks/host_syncs.py``
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hpo2.optim import BatchClosure, from_config, take_snapshot, take_step  # noqa: E402
from hpo2.optim.registry import REGISTRY  # noqa: E402
from hpo2.solvers import DEFAULT_CHECK_EVERY, cg  # noqa: E402
from tests.host_sync import count_host_syncs  # noqa: E402

CG_MODULE = importlib.import_module("hpo2.solvers.cg")


def cg_solve_count(n_iter: int = 50) -> int:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64, generator=gen))
    a = q @ torch.diag(torch.logspace(0, 6, 200, dtype=torch.float64)) @ q.T
    b = torch.randn(200, dtype=torch.float64, generator=gen)
    with count_host_syncs() as counter:
        result = cg(lambda v: a @ v, b, max_iter=n_iter, tol=0.0)
    assert result.n_iter == n_iter, result.stop_reason
    return counter.total


def step_count(name: str) -> int:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5))
    x, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = from_config({"name": name, "settings": {}}, model.parameters())

    def one_step() -> None:
        take_step(optimizer, BatchClosure(model, loss_fn, x, y))

    # SVRG: the training loop takes a snapshot at each epoch start
    take_snapshot(optimizer, lambda: BatchClosure(model, loss_fn, x, y), 256)
    one_step()
    with count_host_syncs() as counter:
        one_step()
    return counter.total


def with_policy(check_every: int, count: Callable[[], int]) -> int:
    """``count()`` with CG's default reading interval set to ``check_every``."""
    original = CG_MODULE.default_check_every
    CG_MODULE.default_check_every = lambda device: check_every
    try:
        return count()
    finally:
        CG_MODULE.default_check_every = original


def main() -> None:
    print(f"| what | CG reads every iteration (cpu) | every {DEFAULT_CHECK_EVERY} (accelerator) |")
    print("| --- | ---: | ---: |")
    rows: list[tuple[str, Callable[[], int]]] = [("CG solve, 50 iterations", cg_solve_count)]
    rows += [(f"{name} step", partial(step_count, name)) for name in REGISTRY]
    for label, count in rows:
        print(f"| {label} | {with_policy(1, count)} | {with_policy(DEFAULT_CHECK_EVERY, count)} |")


if __name__ == "__main__":
    main()
