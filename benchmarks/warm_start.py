"""Does a warm start help?  The same model first tuned on a small slice of the data,
then on all of it, with and without ``warm_start``.

* **Earlier study**: ``digits_mlp`` on its first ``--source-train`` training
  images (default 300), 3 epochs, ``--source-trials`` TPE trials (default 16) over
  L-BFGS, SGD and Adam.
* **This study**: ``digits_mlp`` on all 1,200 training images, 3 epochs,
  ``--trials`` trials (default 6), TPE with seeds 0..``--seeds``-1: *cold* (the
  paper defaults first, then TPE) against *warm* (``warm_start`` from the earlier
  study, top 2 per optimizer, then the defaults and TPE).

The table gives the best validation accuracy after 1, 3 and ``--trials`` trials:
median and [min, max] over seeds.  The warm study's first trials are enqueued
configurations, so they do not vary with the sampler seed.

Run: ``python benchmarks/warm_start.py [--seeds 3] [--trials 6] [--threads 1] [--no-write]``;
raw numbers go to ``benchmarks/results/warm_start.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, study_benchmark_arguments  # noqa: E402

from hpo2.study.config import load_study_config  # noqa: E402
from hpo2.study.runner import StudyRunner  # noqa: E402

OPTIMIZERS = ["lbfgs", "sgd", "adam"]


def run_study(folder: Path, name: str, trials: int, seed: int, **fields: Any) -> list[float]:
    """Run a study file written into ``folder``; the best value after each trial (pruned/failed keep the best)."""
    data = {"name": name, "task": "digits_mlp", "budget": {"epochs": 3}, "optimizers": OPTIMIZERS,
            "sampler": {"name": "tpe", "seed": seed}, "pruner": {"name": "none"}, "n_trials": trials,
            "report": False, "curvature_diagnostics": False, **fields}  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config, file = load_study_config(path)
    study = StudyRunner(config, file).run()
    best, out = float("-inf"), []
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.value is not None:
            best = max(best, t.value)
        out.append(best)
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--source-trials", type=int, default=16)
    parser.add_argument("--source-train", type=int, default=300)
    args = study_benchmark_arguments(parser)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hpo2-warm-") as tmp:
        folder = Path(tmp)
        source = run_study(folder, "small", args.source_trials, 0,
                           task={"name": "digits_mlp", "settings": {"n_train": args.source_train}})  # fmt: skip
        curves: dict[str, list[list[float]]] = {"cold": [], "warm": []}
        for seed in range(args.seeds):
            curves["cold"].append(run_study(folder, f"cold{seed}", args.trials, seed))
            curves["warm"].append(run_study(folder, f"warm{seed}", args.trials, seed,
                                            warm_start={"study": "small.yaml", "top_k": 2}))  # fmt: skip
    points = sorted({1, min(3, args.trials), args.trials})
    lines = ["| start | " + " | ".join(f"best after {k}" for k in points) + " |", "|---|" + "---|" * len(points)]
    for label, runs in curves.items():
        lines.append(f"| {label} | " + " | ".join(spread([run[k - 1] for run in runs]) for k in points) + " |")
    table = "\n".join(lines)
    notes = (f"Earlier study: digits_mlp on {args.source_train} training images, {args.source_trials} TPE trials, best "
             f"{source[-1]:.4f}. Validation accuracy (300 images), median [min, max] over {args.seeds} TPE seeds; "
             f"measured on the shared 2-core machine (load average {load:.1f} at the start), which changes no number "
             "here (budgets in epochs, seeded training).")  # fmt: skip
    publish("Warm start: digits_mlp tuned on 300 images, then on 1,200 (cpu)", table, torch.device("cpu"),
            write=not args.no_write, notes=notes, raw_name="warm_start", raw={"source": source, **curves})  # fmt: skip


if __name__ == "__main__":
    main()
