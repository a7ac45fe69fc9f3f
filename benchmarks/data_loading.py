"""The DataLoader path against the tensor path, and the memory of a streamed full-batch step (issue 23).

(a) **Steps per second**, the same data and model through both paths of the one
training loop (:func:`hpo2.train.run_training`, Adam, evaluation once at the end and
not timed): the tensor path (a :class:`~hpo2.tasks.base.Split`, resident, batches
gathered in place) and the DataLoader path (the same tensors behind a
``TensorDataset``: ``__getitem__`` per sample, ``default_collate``, a seeded order).
The runs alternate, one pair per repeat; the ratio is the median of the pairs'
``DataLoader seconds / tensor seconds`` (1.0: no overhead).  Workloads: ``digits_mlp``
(a tiny MLP: the loader's per-sample cost is most visible) and a small CNN on
synthetic 1x16x16 images.

(b) **Peak memory** of one Hessian-free ``batch_size: full`` step on a Dataset of
``--memory-samples`` samples, each generated from its index on demand (nothing held
in memory), streamed in task batches of ``--task-batch``; beside it the same step on
the same samples held as tensors.  The measure is the growth of the process's peak
resident set size during the step: Linux's ``VmHWM`` reset just before the step
(``/proc/self/clear_refs``) and read just after, minus the resident size at the
step's start -- every allocation, torch's and Python's; on CUDA also
``torch.cuda.max_memory_allocated`` growth.  The claim: the streamed step's growth
is a few task batches, not the dataset.

Run: ``python benchmarks/data_loading.py`` (about a minute on two cores with the
defaults; ``--no-write`` prints only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import publish  # noqa: E402
from hpo2.optim import BatchClosure, HessianFree, StreamingClosure  # noqa: E402
from hpo2.tasks import build_task  # noqa: E402
from hpo2.tasks.base import Split, Task, accuracy  # noqa: E402
from hpo2.tasks.loading import DatasetBatches  # noqa: E402
from hpo2.train import Budget, resolve_device, run_training  # noqa: E402

ADAM = {"name": "adam", "settings": {"lr": 1e-3}}


def _cnn_task(n: int = 2048) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(16 * 16 * 16, 2))  # fmt: skip
    return Task(name="cnn16", model=model, loss_fn=nn.CrossEntropyLoss(), train=Split(x, y),
                valid=Split(x[:256], y[:256]), test=None, batch_size=64, metric="accuracy", metric_fn=accuracy,
                higher_is_better=True, target=1.0)


def _as_dataset(task: Task, workers: int) -> Task:
    """The same task with its splits behind ``TensorDataset``s (a fresh model with the same initialisation)."""
    assert isinstance(task.train, Split) and isinstance(task.valid, Split)
    return Task(name=task.name, model=task.model, loss_fn=task.loss_fn, train=TensorDataset(task.train.x, task.train.y),
                valid=TensorDataset(task.valid.x, task.valid.y), test=None, batch_size=task.batch_size,
                metric=task.metric, metric_fn=task.metric_fn, higher_is_better=task.higher_is_better,
                target=task.target, loader_workers=workers)  # fmt: skip


def throughput(build: Any, steps: int, repeats: int, workers: int, device: torch.device) -> tuple[float, float, float]:
    """Steps per second of the tensor path and of the DataLoader path (medians) and
    the median of the paired time ratios."""
    tensor_s, loader_s, ratios = [], [], []
    for repeat in range(repeats + 1):  # the first pair warms up
        seconds = {}
        for path in (("tensor", "loader") if repeat % 2 else ("loader", "tensor")):
            torch.manual_seed(0)
            task = build()
            task = _as_dataset(task, workers) if path == "loader" else task
            result = run_training(task, ADAM, Budget(steps=steps), device=device, eval_every_steps=steps)
            seconds[path] = result.wall_seconds
        if repeat:
            tensor_s.append(seconds["tensor"])
            loader_s.append(seconds["loader"])
            ratios.append(seconds["loader"] / seconds["tensor"])
    return steps / statistics.median(tensor_s), steps / statistics.median(loader_s), statistics.median(ratios)


class GeneratedDataset(Dataset):
    """``n`` samples, each drawn from its own seeded generator when read: nothing is held in memory."""

    def __init__(self, n: int, features: int, classes: int = 10) -> None:
        self.n, self.features = n, features
        self.teacher = torch.randn(features, classes, generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(self.features, generator=torch.Generator().manual_seed(10_000 + int(i)))
        return x, (x @ self.teacher).argmax()


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth(step: Any, device: torch.device) -> tuple[float, float | None]:
    """MiB by which the peak resident set (and, on CUDA, the peak allocated device
    memory) grew during ``step()`` over its start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
    except OSError as exc:
        raise SystemExit(f"peak memory needs Linux's /proc/self/clear_refs (kernel >= 4.0): {exc}") from None
    start = _rss_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        device_start = torch.cuda.memory_allocated(device)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        device_growth: float | None = (torch.cuda.max_memory_allocated(device) - device_start) / 2**20
    else:
        device_growth = None
    return (_rss_kb("VmHWM") - start) / 1024, device_growth


def full_batch_memory(n: int, features: int, task_batch: int, device: torch.device) -> list[dict[str, Any]]:
    """One Hessian-free full-batch step, streamed from a Dataset and on the same samples as tensors."""
    dataset = GeneratedDataset(n, features)
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    for path in ("streamed", "tensors"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(features, 256), nn.Tanh(), nn.Linear(256, 10)).to(device)
        hf = HessianFree(model.parameters(), batch_size="full", cg_max_iter=10, curvature_fraction=0.1)
        warm_x, warm_y = next(DatasetBatches(dataset, device, 0).in_order(task_batch))
        torch.autograd.grad(loss_fn(model(warm_x), warm_y), list(model.parameters()))  # allocator and autograd warm
        if path == "streamed":
            source = DatasetBatches(dataset, device, seed=0)
            closure: Any = StreamingClosure(model, loss_fn, source.window(source.epoch_order(), task_batch))
        else:
            (x, y), = DatasetBatches(dataset, device, seed=0).in_order(n)  # all n samples, held as tensors
            closure = BatchClosure(model, loss_fn, x, y)
        host, on_device = peak_growth(lambda: hf.step(closure), device)
        rows.append({"path": path, "status": hf.diagnostics["status"], "host_mib": host, "device_mib": on_device,
                     "curvature_samples": hf.diagnostics["curvature_samples"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed pairs of runs per workload")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the DataLoader path")
    parser.add_argument("--memory-samples", type=int, default=50_000, help="samples of the full-batch step's Dataset")
    parser.add_argument("--features", type=int, default=128, help="input features of the full-batch step's samples")
    parser.add_argument("--task-batch", type=int, default=128, help="the task's batch (the loader batch)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    lines = ["| workload | tensor path steps/s | DataLoader path steps/s | DataLoader / tensor time "
             "(median of pairs) |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for name, build in (("digits_mlp, Adam, batch 64", lambda: build_task("digits_mlp")),
                        ("CNN 1x16x16, Adam, batch 64", _cnn_task)):  # fmt: skip
        tensor_rate, loader_rate, ratio = throughput(build, args.steps, args.repeats, args.workers, device)
        lines.append(f"| {name} (workers {args.workers}) | {tensor_rate:.0f} | {loader_rate:.0f} | {ratio:.2f} |")
    speed = "\n".join(lines)

    n, f, b = args.memory_samples, args.features, args.task_batch
    rows = full_batch_memory(n, f, b, device)
    batch_mib, data_mib = b * f * 4 / 2**20, n * f * 4 / 2**20
    memory = [f"Dataset of {n} samples x {f} float32 features ({data_mib:.1f} MiB of inputs), task batch {b} "
              f"({batch_mib:.3f} MiB of inputs); one Hessian-free step, batch_size full, cg_max_iter 10, "
              "curvature_fraction 0.1.", "",
              "| path | step status | curvature chunk | peak RSS growth (MiB) | x dataset inputs "
              "| device peak growth (MiB) |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in rows:
        on_device = "-" if row["device_mib"] is None else f"{row['device_mib']:.1f}"
        memory.append(f"| {row['path']} | {row['status']} | {row['curvature_samples']} | {row['host_mib']:.1f} | "
                      f"{row['host_mib'] / data_mib:.2f} | {on_device} |")  # fmt: skip
    publish("DataLoader path vs tensor path; streamed full-batch memory (benchmarks/data_loading.py)",
            speed + "\n\n" + "\n".join(memory), device, write=not args.no_write)


if __name__ == "__main__":
    main()
