"""Which training seed should a study's trials share: one (``seeds: fixed``) or each its own (``per_trial``)?

``--configs`` settings of one optimizer (``--optimizer``, drawn uniformly from its search space, seeded) are each
trained on ``--seeds`` training seeds (a real task, ``--epochs`` per run, objective: validation loss).  With
every configuration's seed-mean as the truth, two ways of evaluating each configuration once are compared, as a
random search would use them:

* **fixed**: every configuration is trained with the same seed (each of the ``--seeds`` in turn);
* **per_trial**: every configuration with a seed of its own (all assignments drawn at random, 2000 times).

For each: the *regret* of the configuration picked by its one evaluation (its seed-mean minus the best
seed-mean), and Spearman's rank correlation between the one evaluation and the seed-means.  Also printed: the
seed noise (the pooled standard deviation over seeds) against the spread of the seed-means.

Run: ``python benchmarks/seed_noise.py [--task digits_mlp] [--optimizer adam] [--configs 16] [--seeds 5]
[--epochs 1] [--no-write]``; raw numbers go to ``benchmarks/results/seed_noise.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, study_benchmark_arguments  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from hpo2.study.config import StudyConfig  # noqa: E402
from hpo2.study.space import SearchSpace  # noqa: E402
from hpo2.tasks.registry import build_task  # noqa: E402
from hpo2.train.loop import Budget, run_training  # noqa: E402


def losses(task: str, optimizer: str, configs: int, seeds: int, epochs: int) -> np.ndarray:
    """Validation loss of each configuration (rows) under each training seed (columns); a diverged run
    counts as the worst finite loss seen (it would be pruned in a study)."""
    config = StudyConfig(name="noise", task=task, optimizers=[optimizer], enqueue_defaults=False)
    space = SearchSpace(config)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    table = np.full((configs, seeds), np.nan)
    for i in range(configs):
        params = draws.ask(fixed_distributions=space.optimizers[optimizer].distributions).params
        settings = space.optimizers[optimizer].settings_from_params(params)
        for seed in range(seeds):
            result = run_training(build_task(task, {"seed": seed}), {"name": optimizer, "settings": settings},
                                  Budget(epochs=epochs), seed=seed, device="cpu")
            if result.final is not None and np.isfinite(result.final.valid_loss):
                table[i, seed] = result.final.valid_loss
    return np.where(np.isnan(table), np.nanmax(table), table)


def compare(table: np.ndarray, draws: int = 2000) -> dict[str, dict[str, float]]:
    """Median regret and rank correlation of picking by one evaluation, fixed vs per-trial seeds."""
    truth = table.mean(axis=1)
    configs, seeds = table.shape

    def score(observed: np.ndarray) -> tuple[float, float]:
        return float(truth[np.argmin(observed)] - truth.min()), float(spearmanr(observed, truth).statistic)

    fixed = [score(table[:, s]) for s in range(seeds)]
    rng = np.random.default_rng(0)
    per_trial = [score(table[np.arange(configs), rng.integers(seeds, size=configs)]) for _ in range(draws)]
    return {name: {"regret": statistics.median(r for r, _ in runs), "rank": statistics.median(c for _, c in runs),
                   "regret_mean": statistics.fmean(r for r, _ in runs)}
            for name, runs in (("fixed", fixed), ("per_trial", per_trial))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits_mlp")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    args = study_benchmark_arguments(parser)
    table = losses(args.task, args.optimizer, args.configs, args.seeds, args.epochs)
    best_quarter = table[np.argsort(table.mean(axis=1))[: max(3, args.configs // 4)]]
    lines = ["| configurations | seeds | seed noise (pooled std) | spread of seed-means (std) | regret of the pick "
             "(median) | regret (mean) | rank correlation with the seed-mean |", "|---|---|---|---|---|---|---|"]
    raw: dict[str, object] = {"losses": table.tolist()}
    for label, part in ((f"all {len(table)}", table), (f"the best {len(best_quarter)}", best_quarter)):
        noise = float(np.sqrt(part.var(axis=1, ddof=1).mean()))
        spread = float(part.mean(axis=1).std(ddof=1))
        raw[label] = result = compare(part)
        lines += [f"| {label} | {name} | {noise:.4f} | {spread:.4f} | {r['regret']:.4f} | {r['regret_mean']:.4f} | "
                  f"{r['rank']:.3f} |" for name, r in result.items()]
    notes = (f"`python benchmarks/seed_noise.py --task {args.task} --optimizer {args.optimizer} --configs "
             f"{args.configs} --seeds {args.seeds} --epochs {args.epochs}`; the best configurations by seed-mean.")
    publish("Seeds: fixed or per trial", "\n".join(lines), torch.device("cpu"), write=not args.no_write,
            notes=notes, raw_name="seed_noise", raw=raw)


if __name__ == "__main__":
    main()
