"""Per-proposal cost of hpo2's per-optimizer GP wrapper against Optuna's own GPSampler, on the same history.

hpo2 (``sampler: gp``) proposes an optimizer's settings through
:class:`hpo2.study.samplers.PerOptimizerSampler`: allocation, the proposal lock, a shadow
study with that optimizer's finished (and running) trials, Optuna's GPSampler on it, and
the proposal published on the trial.  The reference is Optuna's GPSampler asked directly
on a study holding the same finished trials (the same settings, the same values) over
the same fixed space.  Both samplers live across proposals (the GP's kernel-parameter
cache warms as in a study); each proposal's trial is then failed, so the history stays
the same.  A one-optimizer study, so the wrapper's history is the whole study.

Printed: median seconds per proposal for each and the median of the paired ratios
(wrapper / Optuna, back-to-back), at ``--history`` finished trials, both studies in one
sqlite file (``--storage sqlite``, as a study keeps them: every proposal reads the trials
from the database) or in memory.

Run: ``python benchmarks/proposal_cost.py [--history 20 50] [--repeats 15] [--storage sqlite] [--no-write]``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish, study_benchmark_arguments  # noqa: E402
from optuna.distributions import FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hpo2.study.config import StudyConfig  # noqa: E402
from hpo2.study.samplers import build_sampler  # noqa: E402
from hpo2.study.space import OPTIMIZER_PARAM, SearchSpace  # noqa: E402

OPTIMIZER = "adam"


def objective(params: dict[str, float], space: SearchSpace) -> float:
    """A smooth bowl over the settings mapped to [0, 1] (log-scale ones in log space), minimum at 0.3."""
    distributions = space.optimizers[OPTIMIZER].distributions
    total = 0.0
    for key, dist in distributions.items():
        assert isinstance(dist, FloatDistribution | IntDistribution), f"{key}: a range, not a choice"
        low, high, value = dist.low, dist.high, params[key]
        if dist.log:
            low, high, value = np.log(low), np.log(high), np.log(value)
        total += ((value - low) / (high - low) - 0.3) ** 2
    return float(total)


def studies(history: int, seed: int, storage: str | None) -> tuple[optuna.Study, optuna.Study, SearchSpace]:
    """hpo2's study (the wrapper) and Optuna's (GPSampler on the fixed space), with the same ``history`` trials,
    both in ``storage`` (None: in memory)."""
    config = StudyConfig(name="cost", task="digits_mlp", optimizers=[OPTIMIZER], enqueue_defaults=False,
                         sampler={"name": "gp", "seed": seed})
    space = SearchSpace(config)
    distributions = space.optimizers[OPTIMIZER].distributions
    rng = optuna.samplers.RandomSampler(seed=seed)
    draws = optuna.create_study(sampler=rng)
    params = [draws.ask(fixed_distributions=distributions).params for _ in range(history)]
    ours = optuna.create_study(study_name=f"ours-{history}", storage=storage, direction="minimize",
                               sampler=build_sampler(config, space))
    ours.add_trials([optuna.trial.create_trial(
        params={OPTIMIZER_PARAM: OPTIMIZER, **p}, value=objective(p, space),
        distributions={OPTIMIZER_PARAM: optuna.distributions.CategoricalDistribution([OPTIMIZER]), **distributions})
        for p in params])
    theirs = optuna.create_study(study_name=f"theirs-{history}", storage=storage, direction="minimize",
                                 sampler=optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=2, warn_independent_sampling=False))
    theirs.add_trials([optuna.trial.create_trial(params=p, value=objective(p, space), distributions=distributions)
                       for p in params])
    return ours, theirs, space


def propose_ours(study: optuna.Study, space: SearchSpace) -> None:
    trial = study.ask()
    space.suggest(trial)
    study.tell(trial, state=TrialState.FAIL)


def propose_theirs(study: optuna.Study, space: SearchSpace) -> None:
    trial = study.ask(fixed_distributions=space.optimizers[OPTIMIZER].distributions)
    study.tell(trial, state=TrialState.FAIL)


def measure(history: int, repeats: int, storage: str | None) -> dict[str, float]:
    ours, theirs, space = studies(history, 0, storage)
    for _ in range(2):  # warm both GP caches
        propose_ours(ours, space)
        propose_theirs(theirs, space)
    times_ours, times_theirs, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        propose_theirs(theirs, space)
        middle = time.perf_counter()
        propose_ours(ours, space)
        end = time.perf_counter()
        times_theirs.append(middle - start)
        times_ours.append(end - middle)
        ratios.append((end - middle) / (middle - start))
    return {"history": history, "ours": statistics.median(times_ours), "optuna": statistics.median(times_theirs),
            "ratio": statistics.median(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    args = study_benchmark_arguments(parser)
    with tempfile.TemporaryDirectory() as folder:
        storage = f"sqlite:///{folder}/cost.db" if args.storage == "sqlite" else None
        rows = [measure(h, args.repeats, storage) for h in args.history]
    table = "\n".join(
        ["| finished trials | hpo2 GP wrapper (s/proposal) | Optuna GPSampler (s/proposal) | ratio (paired median) |",
         "|---|---|---|---|"]
        + [f"| {r['history']} | {r['ours']:.3f} | {r['optuna']:.3f} | {r['ratio']:.2f} |" for r in rows])
    publish("Per-proposal cost: hpo2's GP wrapper / Optuna's GPSampler", table, torch.device("cpu"),
            write=not args.no_write, raw_name="proposal_cost", raw=rows,
            notes=f"`python benchmarks/proposal_cost.py --history {' '.join(map(str, args.history))} "
                  f"--repeats {args.repeats} --storage {args.storage}`; one-optimizer study ({OPTIMIZER}), "
                  f"{args.threads} torch thread(s).")


if __name__ == "__main__":
    main()
