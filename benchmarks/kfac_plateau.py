"""K-FAC on the deep sigmoid autoencoders' mean-image plateau (issue 24, item 4).

Trains one built-in autoencoder task (``curves_autoencoder`` or ``fmnist_autoencoder``,
5,000 training and 1,000 validation images) with K-FAC or Adam on minibatches of the
task's batch size, one thread, for ``--steps`` steps or ``--seconds`` of wall time, and
prints every ``--every`` steps the training loss, the validation reconstruction error,
the sum of squared weights (a collapse towards the mean image shows there) and
K-FAC's damping, KL-clip factor and quadratic-model coefficients.

``--plain`` trains on the task's data loss alone, without its weight cost.

Run: ``python benchmarks/kfac_plateau.py --task curves_autoencoder --optimizer kfac
--settings '{"step_rule": "quadratic_model"}' [--plain] [--steps 300]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn

from hpo2.optim import KFAC, BatchClosure
from hpo2.tasks.registry import build_task

SIZES = {
    "curves_autoencoder": {"size_train": 5000, "size_valid": 1000, "size_test": 10},
    "fmnist_autoencoder": {"n_train": 5000, "n_valid": 1000},
}
SHOWN = ("damping", "kl_scale", "alpha", "mu", "reduction_ratio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SIZES), default="curves_autoencoder")
    parser.add_argument("--optimizer", choices=("kfac", "adam"), default="kfac")
    parser.add_argument("--settings", default="{}", help="the optimizer's keyword arguments as JSON")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--plain", action="store_true", help="train without the task's weight cost")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = build_task(args.task, SIZES[args.task])
    model = task.model
    loss_fn = getattr(task.loss_fn, "output_loss", task.loss_fn) if args.plain else task.loss_fn
    settings = json.loads(args.settings)
    optimizer = KFAC(model.parameters(), **settings) if args.optimizer == "kfac" else torch.optim.Adam(
        model.parameters(), **settings)
    x, y = task.train.x, task.train.y
    generator = torch.Generator().manual_seed(0)
    order, position, batch = torch.randperm(len(x), generator=generator), 0, task.batch_size
    print(f"{args.task} {args.optimizer} {settings} plain={args.plain} load {os.getloadavg()[0]:.1f}", flush=True)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        if position + batch > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + batch]
        position += batch
        if isinstance(optimizer, KFAC):
            loss = float(optimizer.step(BatchClosure(model, loss_fn, x[index], y[index])))
            shown = {k: round(float(optimizer.diagnostics[k]), 5) for k in SHOWN if k in optimizer.diagnostics}
        else:
            optimizer.zero_grad()
            value = loss_fn(model(x[index]), y[index])
            value.backward()
            optimizer.step()
            loss, shown = float(value.detach()), {}
        elapsed = time.perf_counter() - started
        if step % args.every == 0 or step == args.steps or elapsed > args.seconds:
            with torch.no_grad():
                error = task.metric_fn(model(task.valid.x), task.valid.y)
                weights = sum(float((m.weight**2).sum()) for m in model.modules() if isinstance(m, nn.Linear))
            print(f"step {step:4d}  {elapsed:6.1f} s  loss {loss:.4f}  valid error {error:.3f}  "
                  f"sum W^2 {weights:.0f}  {shown}", flush=True)
        if elapsed > args.seconds:
            break
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
