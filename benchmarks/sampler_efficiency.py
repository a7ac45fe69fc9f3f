"""Search efficiency of the samplers: best value after N evaluations, over seeds.

Three problems, each sampler built exactly as a study builds it
(:func:`hpo2.study.samplers.plain_sampler` / :func:`build_sampler`):

* **Hartmann-6** (6-d, on [0, 1]^6, global minimum -3.32237): the regret
  f(best) - f* after 25, 50 and 100 evaluations, and the seconds a proposal
  takes at 25, 50 and 100 evaluations (``--samplers`` picks which samplers).
* **A synthetic conditional space** (``branches``) whose best optimizer and
  settings are known: four optimizers' real search spaces, each setting mapped to
  [0, 1] (log-scale ones in log space); adahessian's branch is Hartmann-6 on its
  six float settings (minimum 0, the global one), adam's, sgd's and muon's are
  Branin on their first two float settings, shifted to minima 0.1, 0.2, 0.3;
  every branch is scaled to a range of 0.5.  The best branch is the hardest to search.
* **A real task** (``digits_mlp``: scikit-learn's digits, MLP 64-64-10, ``--epochs``
  per trial (2), objective: validation loss, no pruning) over four optimizers.

On the conditional spaces, random and TPE take the space natively; ``gp`` and
``botorch`` run through hpo2's per-optimizer wrapping with ``balanced`` or
``adaptive`` allocation (:mod:`hpo2.study.allocation`), adaptive also with a third of the
model proposals drawn at random (``random_fraction``).  Every study enqueues the
paper defaults first, as study files do.  Medians and [min, max] over ``--seeds``
sampler seeds; the last column is the first trial at which the median run reaches
random's median best after the last checkpoint.

Run: ``python benchmarks/sampler_efficiency.py [--part hartmann branches task] [--seeds 10]
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
from optuna.distributions import FloatDistribution  # noqa: E402

from hpo2.study.config import SamplerConfig, StudyConfig, load_study_config  # noqa: E402
from hpo2.study.confirm import finalists  # noqa: E402
from hpo2.study.runner import StudyRunner  # noqa: E402
from hpo2.study.samplers import build_sampler, plain_sampler  # noqa: E402
from hpo2.study.space import SearchSpace  # noqa: E402

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


def hartmann_regrets(sampler_name: str, seed: int, evals: int) -> tuple[list[float], list[float]]:
    """Regret of the best value after each evaluation, and the seconds each proposal took."""
    study = optuna.create_study(sampler=plain_sampler(SamplerConfig(name=sampler_name), seed))
    proposals: list[float] = []
    for _ in range(evals):
        start = time.perf_counter()
        trial = study.ask()
        x = np.array([trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)])
        proposals.append(time.perf_counter() - start)
        study.tell(trial, hartmann6(x))
    best = np.minimum.accumulate([t.value for t in study.trials])
    return list(best - HARTMANN_MIN), proposals


def spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}g} [{min(values):.{digits}g}, {max(values):.{digits}g}]"


def hartmann(seeds: int, samplers: list[str]) -> tuple[str, dict]:
    assert abs(hartmann6(HARTMANN_ARGMIN) - HARTMANN_MIN) < 1e-4, "Hartmann-6 is mis-typed"
    evals = max(CHECKPOINTS)
    raw: dict[str, dict] = {}
    lines = ["| sampler | " + " | ".join(f"regret after {n}" for n in CHECKPOINTS) + " | "
             + " | ".join(f"s/proposal at {n}" for n in CHECKPOINTS) + " |",
             "| --- |" + " --- |" * len(CHECKPOINTS) + " ---: |" * len(CHECKPOINTS)]
    for name in samplers:
        runs, proposals = [], []
        for seed in range(seeds):
            regrets, seconds = hartmann_regrets(name, seed, evals)
            runs.append(regrets)
            proposals.append(seconds)
            print(f"hartmann {name} seed {seed}: {regrets[-1]:.4g}", file=sys.stderr, flush=True)
        raw[name] = {"regrets": runs, "proposal_seconds": proposals}
        cells = [spread([r[n - 1] for r in runs]) for n in CHECKPOINTS]
        # a proposal's cost at n: the median over seeds of the mean of proposals n-2..n (smooths single spikes)
        cost = [statistics.median(statistics.fmean(p[n - 3:n]) for p in proposals) for n in CHECKPOINTS]
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(f"{c:.2f}" for c in cost) + " |")
    return "\n".join(lines), raw


#: (label, the study file's ``sampler`` settings but the seed) compared on the conditional spaces
CONDITIONAL_SAMPLERS: list[tuple[str, dict]] = [
    ("random", {"name": "random"}),
    ("tpe", {"name": "tpe"}),
    ("gp balanced", {"name": "gp", "allocation": "balanced"}),
    ("gp adaptive", {"name": "gp", "allocation": "adaptive"}),
    ("gp adaptive, 1/3 random", {"name": "gp", "allocation": "adaptive", "random_fraction": 1 / 3}),
    ("botorch balanced", {"name": "botorch", "allocation": "balanced"}),
    ("botorch adaptive", {"name": "botorch", "allocation": "adaptive"}),
]
BRANIN_MIN = 0.397887
#: optimizer -> (function, minimum of its branch)
BRANCHES = {"adahessian": ("hartmann6", 0.0), "adam": ("branin", 0.1), "sgd": ("branin", 0.2), "muon": ("branin", 0.3)}


def branin(u: np.ndarray) -> float:
    """Branin on [-5, 10] x [0, 15] from the unit square; minimum 0.397887."""
    x, y = 15 * u[0] - 5, 15 * u[1]
    quadratic = (y - 5.1 / (4 * np.pi**2) * x**2 + 5 / np.pi * x - 6) ** 2
    return float(quadratic + 10 * (1 - 1 / (8 * np.pi)) * np.cos(x) + 10)


def unit(value: float, dist: optuna.distributions.BaseDistribution) -> float:
    """A float or int setting's position in [0, 1] (in log space for log-scale settings)."""
    low, high = dist.low, dist.high  # type: ignore[attr-defined]  # float and int distributions only
    if dist.log:  # type: ignore[attr-defined]
        return (np.log(value) - np.log(low)) / (np.log(high) - np.log(low))
    return (value - low) / (high - low)


def branch_value(params: dict, space: SearchSpace) -> float:
    """The synthetic objective of one trial (see the module docstring)."""
    name = params["optimizer"]
    kind, minimum = BRANCHES[name]
    dists = space.optimizers[name].distributions
    u = np.array([unit(params[k], d) for k, d in dists.items() if isinstance(d, FloatDistribution)])
    if kind == "hartmann6":
        return minimum + 0.5 * (hartmann6(u[:6]) - HARTMANN_MIN) / -HARTMANN_MIN
    return minimum + 0.5 * min(1.0, (branin(u[:2]) - BRANIN_MIN) / 50)


def branches_best_values(sampler: dict, seed: int, trials: int) -> list[float]:
    """Best value after each trial of one synthetic study (paper defaults enqueued first)."""
    config = StudyConfig(name="b", task="digits_mlp", optimizers=list(BRANCHES), n_trials=trials,
                         sampler={**sampler, "seed": seed})
    space = SearchSpace(config)
    study = optuna.create_study(direction="minimize", sampler=build_sampler(config, space))
    space.enqueue_defaults(study)
    study.optimize(lambda trial: branch_value({"optimizer": space.suggest(trial)[0], **trial.params}, space),
                   n_trials=trials)
    return list(np.minimum.accumulate([t.value for t in study.trials]))


def conditional_table(runs: dict[str, list[list[float]]], trials: int, digits: int, what: str) -> str:
    """Best after 10/20/trials per sampler, and the first trial reaching random's median best after ``trials``."""
    checkpoints = sorted(n for n in {10, 20, trials} if n <= trials)
    target = statistics.median(r[trials - 1] for r in runs["random"])
    lines = ["| sampler | " + " | ".join(f"{what} after {n}" for n in checkpoints)
             + f" | trials to random's median at {trials} ({target:.{digits}g}) |",
             "| --- |" + " --- |" * len(checkpoints) + " ---: |"]
    for label, values in runs.items():
        median_curve = [statistics.median(r[i] for r in values) for i in range(trials)]
        reached = next((i + 1 for i, v in enumerate(median_curve) if v <= target), None)
        cells = [spread([r[n - 1] for r in values], digits) for n in checkpoints]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {reached if reached else f'> {trials}'} |")
    return "\n".join(lines)


def branches(seeds: int, trials: int, labels: list[str]) -> tuple[str, dict]:
    raw: dict[str, list[list[float]]] = {}
    for label, sampler in (c for c in CONDITIONAL_SAMPLERS if c[0] in labels):
        raw[label] = []
        for seed in range(seeds):
            raw[label].append(branches_best_values(sampler, seed, trials))
            print(f"branches {label} seed {seed}: {raw[label][-1][-1]:.4g}", file=sys.stderr, flush=True)
    return conditional_table(raw, trials, 3, "best"), raw


#: the seed noise of the ``noisy`` part: 10% of a branch's range, half the gap between two branches' minima
NOISE_SD = 0.05
NOISY_CHECKPOINTS = (20, 40, 80)
#: (label, sampler settings) on the noisy conditional space: Optuna's own and hpo2's model samplers
NOISY_SAMPLERS: list[tuple[str, dict]] = [
    ("random", {"name": "random"}),
    ("tpe", {"name": "tpe"}),
    ("gp", {"name": "gp", "allocation": "balanced"}),
    ("botorch", {"name": "botorch", "allocation": "balanced"}),
]


def noisy_study(sampler: dict, seed: int, trials: int) -> tuple[optuna.Study, SearchSpace]:
    """One study on the conditional space whose trials see seed noise: trial ``n`` of
    sampler seed ``seed`` observes the branch value plus N(0, NOISE_SD^2) drawn from
    ``(seed, n)`` (``seeds: per_trial``, so BoTorch models the noise)."""
    config = StudyConfig(name="n", task="digits_mlp", optimizers=list(BRANCHES), n_trials=trials,
                         seeds="per_trial", sampler={**sampler, "seed": seed})
    space = SearchSpace(config)
    study = optuna.create_study(direction="minimize", sampler=build_sampler(config, space))
    space.enqueue_defaults(study)

    def observe(trial: optuna.Trial) -> float:
        true = branch_value({"optimizer": space.suggest(trial)[0], **trial.params}, space)
        return true + float(np.random.default_rng([seed, trial.number]).normal(0, NOISE_SD))

    study.optimize(observe, n_trials=trials)
    return study, space


def recommended_regrets(study: optuna.Study, space: SearchSpace, seed: int, budget: int,
                        top_k: int, confirm_seeds: int) -> tuple[float, float, int]:
    """The true value (the seed-mean; the global minimum is 0) of the configuration
    recommended after the first ``budget`` trials: without confirmation, the best
    observed trial; with it, the finalist (:func:`hpo2.study.confirm.finalists`) of
    best mean over ``confirm_seeds`` new noisy evaluations.  Also the evaluations the
    confirmation spent."""
    prefix = optuna.create_study(direction="minimize")
    prefix.add_trials(study.trials[:budget])
    chosen = finalists(prefix, top_k)
    rng = np.random.default_rng([seed, budget, 10**6])  # seeds no search trial used
    means = [branch_value(t.params, space) + float(rng.normal(0, NOISE_SD, confirm_seeds).mean()) for t in chosen]
    confirmed = chosen[int(np.argmin(means))]
    spent = len(chosen) * confirm_seeds
    return best_observed_regret(study, space, budget), branch_value(confirmed.params, space), spent


def best_observed_regret(study: optuna.Study, space: SearchSpace, budget: int) -> float:
    """The true value of the best observed (noisy) trial among the first ``budget``."""
    best = min(study.trials[:budget], key=lambda t: t.value)
    return branch_value(best.params, space)


def noisy(seeds: int, top_k: int, confirm_seeds: int) -> tuple[str, dict]:
    """Regret of the recommended configuration with and without the confirmation stage
    (module docstring, ``noisy``), and random search at the same total evaluations."""
    trials = max(NOISY_CHECKPOINTS)
    raw: dict[str, dict] = {}
    longest = trials + 2 * top_k * confirm_seeds  # random's study covers a budget plus any confirmation
    for label, sampler in NOISY_SAMPLERS:
        raw[label] = {str(n): {"plain": [], "confirmed": [], "spent": []} for n in NOISY_CHECKPOINTS}
        for seed in range(seeds):
            study, space = noisy_study(sampler, seed, longest if label == "random" else trials)
            for n in NOISY_CHECKPOINTS:
                plain, confirmed, spent = recommended_regrets(study, space, seed, n, top_k, confirm_seeds)
                cell = raw[label][str(n)]
                cell["plain"].append(plain)
                cell["confirmed"].append(confirmed)
                cell["spent"].append(spent)
                if label == "random":  # random search given the same total evaluations, no confirmation
                    cell.setdefault("random_at", []).append({
                        str(extra): best_observed_regret(study, space, n + extra)
                        for extra in range(0, longest - trials + 1, confirm_seeds)
                    })
            print(f"noisy {label} seed {seed} done", file=sys.stderr, flush=True)
    lines = ["| sampler | trials | regret, best observed | regret, confirmed | confirmation evaluations "
             "| random at the same total evaluations | confirmed / random |",
             "| --- | ---: | --- | --- | ---: | --- | ---: |"]
    for label in raw:
        for n in NOISY_CHECKPOINTS:
            cell = raw[label][str(n)]
            spent = int(statistics.median(cell["spent"]))
            extra = min(range(0, longest - trials + 1, confirm_seeds), key=lambda k: abs(k - spent))
            random_same = [at[str(extra)] for at in raw["random"][str(n)]["random_at"]]
            ratio = statistics.median(cell["confirmed"]) / max(statistics.median(random_same), 1e-12)
            lines.append(f"| {label} | {n} | {spread(cell['plain'])} | {spread(cell['confirmed'])} | {spent} "
                         f"| {spread(random_same)} ({n} + {extra}) | {ratio:.2f} |")
    return "\n".join(lines), raw


TASK_STUDY = {
    "task": "digits_mlp",
    "objective": "valid_loss",
    "optimizers": ["newton_cg", "lbfgs", "adahessian", "adam"],
    "pruner": {"name": "none"},
    "curvature_diagnostics": False,
    "report": False,
    "device": "cpu",
}


def task_best_values(label: str, sampler: dict, seed: int, trials: int, epochs: float, workdir: Path) -> list[float]:
    """Best validation loss after each trial of one study."""
    name = f"{''.join(c if c.isalnum() else '-' for c in label)}-{seed}"
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TASK_STUDY, "name": name, "n_trials": trials, "budget": {"epochs": epochs},
                                    "sampler": {**sampler, "seed": seed},
                                    "storage": f"sqlite:///{workdir / (name + '.db')}"}))
    config, file = load_study_config(path)
    study = StudyRunner(config, file).run()
    values = [t.value if t.state == optuna.trial.TrialState.COMPLETE else np.inf for t in study.trials]
    return list(np.minimum.accumulate(values))


def real_task(seeds: int, trials: int, labels: list[str], epochs: float) -> tuple[str, dict]:
    raw: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, sampler in (c for c in CONDITIONAL_SAMPLERS if c[0] in labels):
            raw[label] = []
            for seed in range(seeds):
                raw[label].append(task_best_values(label, sampler, seed, trials, epochs, Path(tmp)))
                print(f"task {label} seed {seed}: {raw[label][-1][-1]:.4g}", file=sys.stderr, flush=True)
    return conditional_table(raw, trials, 4, "best valid loss"), raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["hartmann", "branches", "task"],
                        choices=["hartmann", "branches", "task", "noisy"])
    parser.add_argument("--top-k", type=int, default=3, help="the noisy part's confirmation top_k (a study's default)")
    parser.add_argument("--confirm-seeds", type=int, default=3, help="the noisy part's confirmation seeds")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=40, help="trials per study on the conditional spaces")
    parser.add_argument("--samplers", nargs="+", default=["random", "qmc", "tpe", "cmaes", "gp", "botorch"],
                        help="samplers on Hartmann-6")
    parser.add_argument("--conditional", nargs="+", default=[c[0] for c in CONDITIONAL_SAMPLERS],
                        choices=[c[0] for c in CONDITIONAL_SAMPLERS], help="samplers on the conditional spaces "
                        "(random first: the target column needs it)")
    parser.add_argument("--epochs", type=float, default=2, help="epochs per digits_mlp trial")
    args = study_benchmark_arguments(parser)
    for part in args.part:
        if part == "hartmann":
            md, raw = hartmann(args.seeds, args.samplers)
            title = "Search efficiency: Hartmann-6 regret and proposal cost"
            notes = (f"Regret = best value - ({HARTMANN_MIN}); median [min, max] over {args.seeds} sampler seeds. "
                     "Model samplers start with 5 random trials, TPE with Optuna's 10. Seconds per proposal: "
                     "the median over seeds of the mean of the three proposals up to that count.")
        elif part == "noisy":
            md, raw = noisy(args.seeds, args.top_k, args.confirm_seeds)
            title = "Search efficiency on a noisy objective, with and without the confirmation stage"
            notes = (f"The conditional space of the branches part plus seed noise N(0, {NOISE_SD}^2) per trial "
                     f"(seeds: per_trial); regret = the recommended configuration's true (seed-mean) value, "
                     f"global minimum 0; median [min, max] over {args.seeds} sampler seeds. Confirmation: "
                     f"top_k {args.top_k}, {args.confirm_seeds} new seeds, winner by mean. Random search's column "
                     "is its best observed trial after the same number of trials plus the confirmation's "
                     "evaluations (to the nearest multiple of the seeds).")
        elif part == "branches":
            md, raw = branches(args.seeds, args.trials, args.conditional)
            title = "Search efficiency: synthetic conditional space with a known best optimizer"
            notes = (f"Four branches (adahessian: Hartmann-6, minimum 0; adam, sgd, muon: Branin, minima 0.1, "
                     f"0.2, 0.3); {args.trials} trials, paper defaults first; best value, median [min, max] "
                     f"over {args.seeds} seeds.")
        else:
            md, raw = real_task(args.seeds, args.trials, args.conditional, args.epochs)
            title = "Search efficiency: digits_mlp over newton_cg, lbfgs, adahessian, adam"
            notes = (f"Each study: {args.trials} trials of {args.epochs:g} epochs, objective validation loss "
                     "(lower is better), "
                     f"no pruning, paper defaults first; median [min, max] over {args.seeds} sampler seeds.")
        publish(title, md, torch.device("cpu"), write=not args.no_write, notes=notes,
                raw_name=f"sampler_efficiency-{part}", raw=raw)


if __name__ == "__main__":
    main()
