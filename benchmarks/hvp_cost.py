"""Hessian-vector product cost in units of one gradient, measured side by side.

For an MLP (784-512-512-10, batch 512) and a small CNN (DeepOBS 2c2d-like on
28x28, batch 128), times, as medians over repeats:

* ``gradient``: forward + backward (the unit);
* ``scratch``: forward + gradient graph + one product;
* ``amortized``: forward + gradient graph + 10 products, divided by 10 (what a CG
  iteration costs when the graph is reused, the goal being <= 1.5 gradients);

each ratio is the median of ratios of back-to-back runs of the path and of a
gradient, so machine noise hits both alike;

for hpo2's double-backward operator, forward-over-reverse (``torch.func``, with
``linearize`` for the amortized case), forward-over-reverse under
``torch.compile`` (Inductor; double backward cannot be compiled: AOTAutograd
has no double backward), and the reference ``torch.autograd.functional.hvp``
(which rebuilds everything each call).  The unit stays the eager gradient; a
compiled gradient is listed for comparison, and the one-off compile time too.

Run: ``python benchmarks/hvp_cost.py [--device cuda] [--repeats 20] [--no-write]``; ``--tiny`` (batch 8) and
``--compile-backend eager`` (Dynamo's tracing without Inductor's code generation) make the quick check that
``benchmarks/gpu.sh --dry-run`` runs on a CPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, paired_ratio, publish  # noqa: E402

from hpo2.curvature import HessianOperator, functional_hvp, module_loss_fn  # noqa: E402

N_AMORTIZED = 10


def mlp(batch: int = 512) -> tuple[nn.Module, torch.Size, int]:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    return model, torch.Size([batch, 784]), batch


def cnn(batch: int = 128) -> tuple[nn.Module, torch.Size, int]:
    model = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.Tanh(), nn.Linear(256, 10),
    )  # fmt: skip
    return model, torch.Size([batch, 1, 28, 28]), batch


def measure(name: str, build: Callable, device: torch.device, repeats: int, batch: int | None = None,
            backend: str = "inductor", products: int = N_AMORTIZED, warmup: int = 2,
            ) -> list[tuple[str, str, float, float]]:
    torch.manual_seed(0)
    model, x_shape, batch = build() if batch is None else build(batch)
    model.to(device)
    x = torch.randn(x_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    params = list(model.parameters())
    vs = [[torch.randn_like(p) for p in params] for _ in range(products)]
    named = dict(model.named_parameters())
    detached = {k: p.detach() for k, p in named.items()}
    v_named = [dict(zip(named, v)) for v in vs]
    pure = module_loss_fn(model, loss_fn, x, y)

    def gradient() -> None:
        torch.autograd.grad(loss_fn(model(x), y), params)

    def double_backward(n: int) -> None:
        op = HessianOperator(loss_fn(model(x), y), params)
        for k in range(n):
            op.matvec(vs[k])

    def forward_over_reverse(n: int) -> None:
        for k in range(n):
            functional_hvp(pure, detached, v_named[k])

    def linearized(n: int) -> None:
        _, jvp_fn = torch.func.linearize(torch.func.grad(pure), detached)
        for k in range(n):
            jvp_fn(v_named[k])

    names = list(named)

    def as_tuple_loss(*ps: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, dict(zip(names, ps)), (x,)), y)

    def reference(n: int) -> None:
        for k in range(n):
            torch.autograd.functional.hvp(as_tuple_loss, tuple(detached.values()), tuple(vs[k]))

    compiled_grad = torch.compile(torch.func.grad(pure), backend=backend)
    compiled_hvp = torch.compile(lambda p, v: functional_hvp(pure, p, v), backend=backend)

    def compiled_forward_over_reverse(n: int) -> None:
        for k in range(n):
            compiled_hvp(detached, v_named[k])

    t_grad = median_seconds(gradient, device, repeats, warmup + 1)
    rows = [(name, "gradient (unit)", t_grad * 1e3, 1.0)]
    start = time.perf_counter()
    compiled_grad(detached)
    compiled_forward_over_reverse(1)
    compile_ms = (time.perf_counter() - start) * 1e3
    rows.append((name, "torch.compile of gradient + product: one-off compile time", compile_ms, math.nan))
    t_cgrad, ratio = paired_ratio(lambda: compiled_grad(detached), gradient, device, repeats, warmup)
    rows.append((name, "gradient, torch.compile", t_cgrad * 1e3, ratio))
    paths: dict[str, Callable[[int], None]] = {
        "hpo2 double backward": double_backward,
        "hpo2 forward-over-reverse": forward_over_reverse,
        "hpo2 forward-over-reverse, torch.compile": compiled_forward_over_reverse,
        "torch.autograd.functional.hvp (reference)": reference,
    }
    for label, fn in paths.items():
        t1, ratio = paired_ratio(lambda: fn(1), gradient, device, repeats, warmup)
        rows.append((name, f"{label}: scratch", t1 * 1e3, ratio))
    amortized = {**paths, "hpo2 forward-over-reverse (linearize)": linearized}
    for label, fn in amortized.items():
        try:
            tn, ratio = paired_ratio(lambda: fn(products), gradient, device, max(min(5, repeats), repeats // 2), warmup)
        except Exception as exc:  # linearize is a prototype in some torch builds: report, do not die
            print(f"{name} {label}: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        rows.append((name, f"{label}: amortized over {products}", tn / products * 1e3, ratio / products))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    parser.add_argument("--tiny", action="store_true",
                        help="batch 8, 2 products amortized, no warm-up (a quick check, not a measurement)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: tracing only)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="torch.fx")  # linearize's tracer is noisy
    device = torch.device(args.device)
    batch, products, warmup = (8, 2, 0) if args.tiny else (None, N_AMORTIZED, 2)
    rows = []
    for name, build in ((f"MLP 784-512-512-10, batch {batch or 512}", mlp), (f"CNN 2c2d, batch {batch or 128}", cnn)):
        rows += measure(name, build, device, args.repeats, batch, args.compile_backend, products, warmup)
    lines = ["| model | measurement | median ms | / gradient |", "| --- | --- | ---: | ---: |"]
    lines += [
        f"| {m} | {what} | {ms:.2f} | {'-' if math.isnan(ratio) else f'{ratio:.2f}'} |" for m, what, ms, ratio in rows
    ]
    table = "\n".join(lines)
    publish(f"HVP cost over gradient cost ({device.type})", table, device, write=not args.no_write, raw_name="hvp_cost",
            raw=[{"model": m, "measurement": what, "median_ms": ms, "per_gradient": None if math.isnan(r) else r}
                 for m, what, ms, r in rows])


if __name__ == "__main__":
    main()
