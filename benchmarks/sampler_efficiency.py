"""Search efficiency of the samplers: best value after N evaluations, over seeds.

Two problems, each sampler built exactly as a study builds it
(:func:`hpo2.study.samplers.plain_sampler` / :func:`build_sampler`):

* **Hartmann-6** (6-d, on [0, 1]^6, global minimum -3.32237): the regret
  f(best) - f* after 25, 50 and 100 evaluations, for random, QMC, TPE, CMA-ES,
  Optuna's GP and BoTorch.
* **A real task** (``digits_mlp``: scikit-learn's digits, MLP 64-64-10,
  5 epochs per trial, objective: validation loss, no pruning, defaults not
  enqueued) searching over several optimizers and their settings -- the
  conditional space.  Random and TPE take it natively; ``gp`` and ``botorch`` run
  through hpo2's per-optimizer wrapping (balanced allocation, joint proposals per
  optimizer); ``gp (Optuna, unwrapped)`` is Optuna's GPSampler given the same
  conditional space directly, which models only the optimizer choice and draws
  every setting at random: what hpo2's handling is measured against.

Medians and [min, max] over ``--seeds`` sampler seeds.

Run: ``python benchmarks/sampler_efficiency.py [--part hartmann task] [--seeds 5]
[--trials 40] [--threads 1] [--no-write]``; raw numbers go to
``benchmarks/results/sampler_efficiency-<part>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, study_benchmark_arguments  # noqa: E402

from hpo2.study.config import SamplerConfig, load_study_config  # noqa: E402
from hpo2.study.runner import StudyRunner  # noqa: E402
from hpo2.study.samplers import plain_sampler  # noqa: E402

HARTMANN_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
HARTMANN_A = np.array([
    [10, 3, 17, 3.5, 1.7, 8],
    [0.05, 10, 17, 0.1, 8, 14],
    [3, 3.5, 1.7, 10, 17, 8],
    [17, 8, 0.05, 10, 0.1, 14],
])
HARTMANN_P = 1e-4 * np.array([
    [1312, 1696, 5569, 124, 8283, 5886],
    [2329, 4135, 8307, 3736, 1004, 9991],
    [2348, 1451, 3522, 2883, 3047, 6650],
    [4047, 8828, 8732, 5743, 1091, 381],
])
HARTMANN_MIN = -3.32237
HARTMANN_ARGMIN = np.array([0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573])
CHECKPOINTS = (25, 50, 100)


def hartmann6(x: np.ndarray) -> float:
    r"""Hartmann-6: :math:`-\sum_i \alpha_i \exp(-\sum_j A_{ij} (x_j - P_{ij})^2)`."""
    return float(-(HARTMANN_ALPHA * np.exp(-(HARTMANN_A * (x - HARTMANN_P) ** 2).sum(1))).sum())


def hartmann_regrets(sampler_name: str, seed: int, evals: int) -> list[float]:
    """Regret of the best value after each evaluation."""
    study = optuna.create_study(sampler=plain_sampler(SamplerConfig(name=sampler_name), seed))
    study.optimize(lambda t: hartmann6(np.array([t.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)])), n_trials=evals)
    best = np.minimum.accumulate([t.value for t in study.trials])
    return list(best - HARTMANN_MIN)


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}g} [{min(values):.{digits}g}, {max(values):.{digits}g}]"


def hartmann(seeds: int) -> tuple[str, dict]:
    assert abs(hartmann6(HARTMANN_ARGMIN) - HARTMANN_MIN) < 1e-4, "Hartmann-6 is mis-typed"
    evals = max(CHECKPOINTS)
    raw: dict[str, dict] = {}
    lines = ["| sampler | " + " | ".join(f"regret after {n}" for n in CHECKPOINTS) + " | seconds per run |",
             "| --- |" + " --- |" * len(CHECKPOINTS) + " ---: |"]
    for name in ("random", "qmc", "tpe", "cmaes", "gp", "botorch"):
        runs, seconds = [], []
        for seed in range(seeds):
            start = time.perf_counter()
            runs.append(hartmann_regrets(name, seed, evals))
            seconds.append(time.perf_counter() - start)
            print(f"hartmann {name} seed {seed}: {runs[-1][-1]:.4g}", file=sys.stderr, flush=True)
        raw[name] = {"regrets": runs, "seconds": seconds}
        cells = [spread([r[n - 1] for r in runs]) for n in CHECKPOINTS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(seconds):.1f} |")
    return "\n".join(lines), raw


TASK_STUDY = {
    "task": "digits_mlp",
    "budget": {"epochs": 5},
    "objective": "valid_loss",
    "optimizers": ["newton_cg", "lbfgs", "adahessian", "adam"],
    "pruner": {"name": "none"},
    "enqueue_defaults": False,
    "curvature_diagnostics": False,
    "report": False,
    "device": "cpu",
}
TASK_SAMPLERS = {
    "random": ("random", False),
    "tpe": ("tpe", False),
    "gp (hpo2 per-optimizer)": ("gp", False),
    "botorch (hpo2 per-optimizer)": ("botorch", False),
    "gp (Optuna, unwrapped)": ("gp", True),
}


def task_best_values(sampler: str, unwrapped: bool, seed: int, trials: int, workdir: Path) -> list[float]:
    """Best validation loss after each trial of one study."""
    path = workdir / f"{sampler}-{int(unwrapped)}-{seed}.yaml"
    name = path.stem
    path.write_text(yaml.safe_dump({**TASK_STUDY, "name": name, "n_trials": trials,
                                    "sampler": {"name": sampler, "seed": seed},
                                    "storage": f"sqlite:///{workdir / (name + '.db')}"}))
    config, file = load_study_config(path)
    runner = StudyRunner(config, file).open()
    if unwrapped:
        runner.study.sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=5, warn_independent_sampling=False)
    study = runner.run()
    values = [t.value if t.state == optuna.trial.TrialState.COMPLETE else np.inf for t in study.trials]
    return list(np.minimum.accumulate(values))


def real_task(seeds: int, trials: int) -> tuple[str, dict]:
    checkpoints = sorted({max(1, trials // 4), trials // 2, trials})
    raw: dict[str, list[list[float]]] = {}
    lines = ["| sampler | " + " | ".join(f"best valid loss after {n}" for n in checkpoints) + " | optimizer of the best (per seed) |",
             "| --- |" + " --- |" * len(checkpoints) + " --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, (sampler, unwrapped) in TASK_SAMPLERS.items():
            runs, winners = [], []
            for seed in range(seeds):
                runs.append(task_best_values(sampler, unwrapped, seed, trials, Path(tmp)))
                study = optuna.load_study(study_name=f"{sampler}-{int(unwrapped)}-{seed}",
                                          storage=f"sqlite:///{Path(tmp) / f'{sampler}-{int(unwrapped)}-{seed}.db'}")
                winners.append(study.best_trial.params["optimizer"])
                print(f"task {label} seed {seed}: {runs[-1][-1]:.4g} ({winners[-1]})", file=sys.stderr, flush=True)
            raw[label] = runs
            cells = [spread([r[n - 1] for r in runs], 4) for n in checkpoints]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(winners)} |")
    return "\n".join(lines), raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["hartmann", "task"], choices=["hartmann", "task"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40, help="trials per study on the real task")
    args = study_benchmark_arguments(parser)
    for part in args.part:
        if part == "hartmann":
            md, raw = hartmann(args.seeds)
            title = "Search efficiency: Hartmann-6 regret"
            notes = (f"Regret = best value - ({HARTMANN_MIN}); median [min, max] over {args.seeds} sampler seeds. "
                     "Model samplers start with 5 random trials (hpo2's default), TPE with Optuna's 10.")
        else:
            md, raw = real_task(args.seeds, args.trials)
            title = "Search efficiency: digits_mlp over newton_cg, lbfgs, adahessian, adam"
            notes = (f"Each study: {args.trials} trials of 5 epochs, objective validation loss (lower is better), "
                     f"no pruning, defaults not enqueued; median [min, max] over {args.seeds} sampler seeds.")
        publish(title, md, torch.device("cpu"), write=not args.no_write, notes=notes,
                raw_name=f"sampler_efficiency-{part}", raw=raw)


if __name__ == "__main__":
    main()
