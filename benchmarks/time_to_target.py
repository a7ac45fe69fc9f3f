"""Time-to-target: does second-order pay on these tasks?

For each task and each optimizer, two configurations are trained under the same
budget:

* ``defaults``: the optimizer's paper defaults (``from_config({"name": ...})``);
* ``tuned``: the best trial of an hpo2 study over that optimizer alone -- TPE,
  median pruning, the paper defaults enqueued first, ``--trials`` trials, the
  same budget, task seed 0 -- so every optimizer, Adam and SGD included, gets
  the same tuning budget.

Each configuration is then retrained ``--repeats`` times with training seeds
1, 2, ... (new mini-batch orders, not the tuning seed; the data split and the
initialisation are the task's seed 0), evaluating every ``eval_every_steps``
steps.  Reported, as medians over the repeats:

* how many repeats reached the task's target validation metric, and the wall
  seconds (evaluation excluded) and gradient-equivalents until they did (the
  median over all repeats, unreached ones counted as never, so it is ``-`` when
  fewer than half reached it);
* the validation metric and the full training-set loss at the end of the budget;
* for ``quadratic_deep``, the test loss after DeepOBS's 100 epochs, beside
  DeepOBS's published baselines.

``<optimizer>+sam`` (e.g. ``adam+sam``) runs the optimizer wrapped in SAM: its
defaults add ``sam: {rho: 0.05}`` (Foret et al.), its tuning study also searches
``sam.rho`` in [0.01, 0.5] (log), with the same number of trials.  The table's
``gap`` is the final training-set metric minus the validation metric (for a
metric to maximise; reversed for one to minimise): positive means overfitting.

Run: ``python benchmarks/time_to_target.py [--tasks logreg_breast_cancer ...]
[--trials 8] [--repeats 3] [--variants defaults tuned] [--seconds S] [--n-train N] [--device cpu] [--threads 1]
[--no-write]``; raw numbers go to
``benchmarks/results/time_to_target-<task>.json`` (not with ``--no-write``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, study_benchmark_arguments  # noqa: E402

from hpo2.tasks import build_task  # noqa: E402
from hpo2.train import Budget, evaluate, run_training  # noqa: E402

OPTIMIZERS = ["newton_cg", "hessian_free", "lbfgs", "adahessian", "sophia", "kfac", "shampoo", "soap",
              "saddle_free_newton", "muon", "adam", "sgd"]


@dataclass(frozen=True)
class Case:
    """One task's benchmark setup."""

    task: str
    settings: dict[str, Any]
    budget: dict[str, Any]
    eval_every_steps: int | None
    published: str = ""
    fixed: dict[str, dict[str, Any]] = field(default_factory=dict)


CASES = {
    "logreg_breast_cancer": Case("logreg_breast_cancer", {}, {"seconds": 2}, 1),
    "quadratic_deep": Case(
        "quadratic_deep", {}, {"epochs": 100}, None,
        "DeepOBS quadratic_deep (batch 128, 100 epochs, learning rate tuned on a grid, test loss): "
        "SGD 87.40, Momentum 87.05, Adam 87.11 (Schneider, Balles & Hennig 2019, table 2). "
        "Same data, model, batch size and epochs here; DeepOBS tuned the learning rate only. "
        "Sophia runs with its Hutchinson estimator (Sophia-H) here: the quadratic's loss is not a "
        "likelihood, so the Gauss-Newton-Bartlett default has no labels to sample.",
        fixed={"sophia": {"estimator": "hutchinson"}},
    ),
    "mnist1d_mlp": Case(
        "mnist1d_mlp", {}, {"seconds": 4}, 36,
        "MNIST-1D MLP: 68% test accuracy after full training (Greydanus 2020); here 4 seconds of one CPU thread.",
    ),
    "fmnist_mlp": Case(
        "fmnist_mlp", {"n_valid": 5000}, {"seconds": 10}, 50,
        "DeepOBS publishes no baseline for fmnist_mlp, and its fmnist_2c2d baselines take 100 epochs "
        "of a CNN, out of reach of a CPU benchmark; none is comparable here.",
    ),
    "fmnist_2c2d": Case(
        "fmnist_2c2d", {"n_valid": 5000}, {"seconds": 10}, 50,
        "DeepOBS fmnist_2c2d test accuracy after 100 epochs: SGD 92.27%, Momentum 92.14%, Adam 92.34% "
        "(Schneider, Balles & Hennig 2019); a budget of seconds is not comparable.",
    ),
    "fmnist_autoencoder": Case(
        "fmnist_autoencoder", {"n_train": 2000, "n_valid": 1000}, {"seconds": 40}, None,
        "Martens (2010) trains the 784-1000-500-250-30 autoencoder on all 60,000 MNIST images for hours "
        "(on a GPU); here Fashion-MNIST (different data), 2,000 training images and 40 s of a shared "
        "2-core CPU, so no published number is comparable.",
        fixed={"hessian_free": {"batch_size": "full", "curvature_fraction": 0.1, "cg_max_iter": 50}},
    ),
    "byte_gpt": Case(
        "byte_gpt", {}, {"seconds": 180}, 32,
        "Issue 24's transformer: published wall-clock wins of Muon (~1.35x AdamW, Jordan et al. 2024) and SOAP "
        "(~35% less than AdamW, Vyas et al. 2024) are on GPT models of 124M-660M parameters on GPUs; this is a "
        "1.3M-parameter byte-level GPT for 180 s of a CPU, so none is comparable. Run with "
        "--optimizers adamw muon soap shampoo kfac.",
    ),
    "curves_autoencoder": Case(
        "curves_autoencoder", {"n_valid": 2000}, {"seconds": 20}, 5,
        "Martens (2010) trains this autoencoder on the real CURVES data for hours; the data here are "
        "generated CURVES-like images and the budget is 20 s, so no published number is comparable.",
    ),
}


@dataclass
class Repeat:
    seed: int
    status: str
    seconds_to_target: float | None
    grad_equivalents_to_target: float | None
    valid_metric: float
    train_loss: float
    train_metric: float
    test_loss: float | None
    steps: int
    wall_seconds: float


@dataclass
class Outcome:
    optimizer: str
    variant: str
    config: dict[str, Any]
    repeats: list[Repeat] = field(default_factory=list)
    tuning_seconds: float | None = None


def tune(case: Case, optimizer: str, n_trials: int, workdir: Path, device: str) -> tuple[dict[str, Any], float]:
    """The best config of an hpo2 study over ``optimizer`` alone, and the study's wall seconds."""
    import optuna  # here: ``--variants defaults`` runs where optuna and MLflow are not installed

    from hpo2.study.config import load_study_config
    from hpo2.study.runner import StudyRunner
    from hpo2.study.space import SearchSpace

    label = optimizer.replace("+", "-")  # study names take letters, digits, '_', '.', '-'
    study_file = workdir / f"{label}.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": f"ttt-{case.task}-{label}",
        "task": {"name": case.task, "settings": case.settings},
        "budget": case.budget,
        "optimizers": [optimizer_choice(case, optimizer)],
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 3},
        "n_trials": n_trials,
        "device": device,
        "curvature_diagnostics": False,
        "report": False,
    }))
    config, path = load_study_config(study_file)
    start = time.perf_counter()
    study = StudyRunner(config, path).run()
    seconds = time.perf_counter() - start
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return defaults(case, optimizer), seconds  # every trial failed or was pruned
    return SearchSpace(config).optimizer_config(study.best_trial.params), seconds


SAM_SUFFIX = "+sam"
SAM_SEARCH = {"rho": [0.01, 0.5]}


def optimizer_choice(case: Case, optimizer: str) -> dict[str, Any]:
    """The study file's ``optimizers`` entry for ``optimizer`` (``name+sam`` searches SAM's rho too)."""
    name = optimizer.removesuffix(SAM_SUFFIX)
    choice: dict[str, Any] = {"name": name, "fixed": case.fixed.get(name, {})}
    return {**choice, "sam": SAM_SEARCH} if optimizer.endswith(SAM_SUFFIX) else choice


def defaults(case: Case, optimizer: str) -> dict[str, Any]:
    """The paper defaults, with the settings this task must fix (see ``Case.fixed``)."""
    name = optimizer.removesuffix(SAM_SUFFIX)
    settings: dict[str, Any] = dict(case.fixed.get(name, {}))
    if optimizer.endswith(SAM_SUFFIX):
        settings["sam"] = {"rho": 0.05}
    return {"name": name, "settings": settings}


def train_once(case: Case, optimizer_config: dict[str, Any], seed: int, device: str) -> Repeat:
    task = build_task(case.task, case.settings)
    try:
        result = run_training(task, optimizer_config, Budget(**case.budget), seed=seed, device=device,
                              eval_every_steps=case.eval_every_steps)
    except Exception as exc:  # a configuration that cannot run is a row, not the end of the benchmark
        print(f"{case.task} {optimizer_config}: failed: {exc}", file=sys.stderr)
        return Repeat(
            seed, f"failed: {type(exc).__name__}", None, None, math.nan, math.nan, math.nan, None, 0, math.nan
        )
    final = result.final
    dev = torch.device(device)  # the model trained there; the task's splits stay in host memory
    diverged = result.status == "diverged"
    train_loss, train_metric = (
        (math.nan, math.nan) if diverged else evaluate(task, task.train, device=dev))
    with_test = case.task == "quadratic_deep" and task.test
    test_loss = evaluate(task, task.test, device=dev)[0] if with_test else None
    return Repeat(
        seed=seed, status=result.status, seconds_to_target=result.time_to_target_seconds,
        grad_equivalents_to_target=result.time_to_target_grad_equivalents,
        valid_metric=final.valid_metric if final and result.status != "diverged" else math.nan,
        train_loss=train_loss, train_metric=train_metric, test_loss=test_loss, steps=result.steps,
        wall_seconds=result.wall_seconds,
    )


def median_to_target(values: list[float | None]) -> float | None:
    """Median with unreached runs as +infinity; None when fewer than half reached."""
    ranked = sorted(math.inf if v is None else v for v in values)
    middle = statistics.median(ranked)
    return None if math.isinf(middle) else middle


def median_gap(repeats: list[Repeat], higher_is_better: bool) -> float | None:
    """Median of train metric - valid metric (valid - train for a metric to minimise)."""
    gaps = [(r.train_metric - r.valid_metric) * (1 if higher_is_better else -1) for r in repeats]
    finite = [g for g in gaps if math.isfinite(g)]
    return statistics.median(finite) if finite else None


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "diverged or failed"
    text = f"{statistics.median(finite):.4g} [{min(finite):.4g}, {max(finite):.4g}]"
    return text if len(finite) == len(values) else f"{text} ({len(values) - len(finite)} diverged or failed)"


def table(case: Case, outcomes: list[Outcome]) -> str:
    task = build_task(case.task, case.settings)
    direction = ">=" if task.higher_is_better else "<="
    with_test = case.task == "quadratic_deep"
    head = (f"| optimizer | settings | reached {task.metric} {direction} {task.target:g} | s to target | "
            f"grad-eq to target | final valid {task.metric} median [min, max] | final train loss | gap |"
            + (" test loss |" if with_test else ""))
    lines = [head, "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |" + (" ---: |" if with_test else "")]
    for o in outcomes:
        reps = o.repeats
        reached = sum(r.seconds_to_target is not None for r in reps)
        finite_train = [r.train_loss for r in reps if math.isfinite(r.train_loss)]
        row = (f"| {o.optimizer} | {o.variant} | {reached}/{len(reps)} | "
               f"{fmt(median_to_target([r.seconds_to_target for r in reps]))} | "
               f"{fmt(median_to_target([r.grad_equivalents_to_target for r in reps]))} | "
               f"{spread([r.valid_metric for r in reps])} | "
               f"{fmt(statistics.median(finite_train) if finite_train else None, 4)} | "
               f"{fmt(median_gap(reps, task.higher_is_better), 3)} |")
        if with_test:
            tests = [r.test_loss for r in reps if r.test_loss is not None and math.isfinite(r.test_loss)]
            row += f" {fmt(statistics.median(tests) if tests else None, 4)} |"
        lines.append(row)
    return "\n".join(lines)


def run_case(case: Case, optimizers: list[str], n_trials: int, repeats: int, device: str,
             wanted: tuple[str, ...] = ("defaults", "tuned")) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for optimizer in optimizers:
            variants = [Outcome(optimizer, "defaults", defaults(case, optimizer))] if "defaults" in wanted else []
            if "tuned" in wanted:
                tuned, tuning_seconds = tune(case, optimizer, n_trials, Path(tmp), device)
                variants.append(Outcome(optimizer, "tuned", tuned, tuning_seconds=tuning_seconds))
            for outcome in variants:
                outcome.repeats = [train_once(case, outcome.config, seed, device) for seed in range(1, repeats + 1)]
                outcomes.append(outcome)
                print(f"{case.task} {optimizer} {outcome.variant}: "
                      f"{[(r.status, fmt(r.seconds_to_target), fmt(r.valid_metric, 4)) for r in outcome.repeats]}",
                      file=sys.stderr, flush=True)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--trials", type=int, default=8, help="tuning trials per optimizer")
    parser.add_argument("--repeats", type=int, default=3, help="training seeds per configuration")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--variants", nargs="+", default=["defaults", "tuned"], choices=["defaults", "tuned"],
                        help="which configurations to retrain (tuned only halves a slow task's time)")
    parser.add_argument("--seconds", type=float, help="budget per run in seconds, instead of the task's own")
    parser.add_argument("--n-train", type=int, help="use only the first n training samples (a quick check)")
    args = study_benchmark_arguments(parser)
    for name in args.tasks:
        case = CASES[name]
        if args.seconds is not None:
            case = replace(case, budget={"seconds": args.seconds})
        if args.n_train is not None:
            case = replace(case, settings={**case.settings, "n_train": args.n_train, "n_valid": args.n_train})
        outcomes = run_case(case, args.optimizers, args.trials, args.repeats, args.device, tuple(args.variants))
        md = table(case, outcomes)
        budget = ", ".join(f"{k} {v}" for k, v in case.budget.items())
        notes = (f"Budget per run: {budget}; tuning: {args.trials} TPE trials per optimizer at that budget; "
                 f"{args.repeats} training seeds per row.")
        if case.published:
            notes += f"\n\nPublished: {case.published}"
        device = torch.device(args.device)
        publish(f"Time-to-target: {name} ({device.type})", md, device, write=not args.no_write, notes=notes,
                raw_name=f"time_to_target-{name}",
                raw={"case": asdict(case), "trials": args.trials, "outcomes": [asdict(o) for o in outcomes]})


if __name__ == "__main__":
    main()
