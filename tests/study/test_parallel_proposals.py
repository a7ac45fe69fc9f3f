"""Workers that don't collide (issue 25, 1): four processes on one sqlite storage propose in rounds of four
concurrent trials -- each asks, proposes and keeps its trial running until all four have proposed -- through
the per-optimizer sampler as ``StudyRunner.open`` builds it (its own sampler stream, the study's proposal
lock).  No configuration may repeat (nor come within ``MIN_SPREAD`` of a concurrent one), and balanced
allocation must split every round evenly."""

from __future__ import annotations

import math
import multiprocessing
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo2.study.config import StudyConfig
from hpo2.study.locks import study_lock
from hpo2.study.samplers import build_sampler, claim_stream
from hpo2.study.space import SearchSpace
from hpo2.study.storage import open_storage, study_init_lock

PROCESSES = 4
ROUNDS = 4
#: the least distance (in the unit cube of an optimizer's settings) between concurrent proposals of one optimizer
MIN_SPREAD = 0.02
OPTIMA = {"sgd": {"lr": 1e-2, "momentum": 0.5}, "adam": {"lr": 3e-4, "beta1": 0.85, "beta2": 0.99}}


def _config(sampler: str) -> StudyConfig:
    return StudyConfig(name="parallel", task="digits_mlp", optimizers=["sgd", "adam"], enqueue_defaults=False,
                       sampler={"name": sampler, "seed": 0, "allocation": "balanced"}, n_trials=PROCESSES * ROUNDS)


def _objective(name: str, settings: dict) -> float:
    """A smooth bowl per optimizer (its minimum at :data:`OPTIMA`), log-scale in the learning rate."""
    optimum = OPTIMA[name]
    return (math.log10(settings["lr"] / optimum["lr"])) ** 2 + sum(
        ((settings[k] - v) * 5) ** 2 for k, v in optimum.items() if k != "lr")


def _unit(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The trial's settings mapped to [0, 1] (log-scale ones in log space)."""
    unit = []
    for key, dist in sorted(trial.distributions.items()):
        if key != "optimizer":
            f = math.log if dist.log else float
            unit.append((f(trial.params[key]) - f(dist.low)) / (f(dist.high) - f(dist.low)))
    return unit


def closest_concurrent(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The smallest distance (unit cube) between two proposals of one optimizer made in the same round."""
    closest = math.inf
    for start in range(0, len(trials), PROCESSES):
        round_ = trials[start:start + PROCESSES]
        for i, a in enumerate(round_):
            for b in round_[i + 1:]:
                if a.params["optimizer"] == b.params["optimizer"]:
                    closest = min(closest, math.dist(_unit(a), _unit(b)))
    return closest


def _worker(sampler: str, url: str, folder: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    config = _config(sampler)
    space = SearchSpace(config)
    with study_init_lock(url, Path(folder) / "study.yaml", config.name):
        study = optuna.load_study(study_name=config.name, storage=open_storage(url, config))
        study.sampler = build_sampler(config, space, claim_stream(study), lambda: study_lock(study, url, "proposal"))
    for _ in range(ROUNDS):
        barrier.wait()
        trial = study.ask()
        value = _objective(*space.suggest(trial))
        barrier.wait()  # all four trials of the round are proposed and running
        time.sleep(0.05 * (trial.number % PROCESSES))  # they finish in some order, not all at once
        study.tell(trial, value)


@pytest.mark.slow  # four fresh interpreters, twenty model proposals
@pytest.mark.parametrize("sampler", ["gp", "botorch"])
def test_four_workers_on_one_storage_never_propose_the_same_configuration(tmp_path, sampler):
    url = f"sqlite:///{tmp_path / 'parallel.db'}"
    config = _config(sampler)
    optuna.create_study(study_name=config.name, storage=open_storage(url, config), direction="minimize")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES, timeout=300)
    workers = [context.Process(target=_worker, args=(sampler, url, str(tmp_path), barrier)) for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES

    trials = optuna.load_study(study_name=config.name, storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * (PROCESSES * ROUNDS)
    configurations = [tuple(sorted(t.params.items())) for t in trials]
    duplicates = len(configurations) - len(set(configurations))
    assert duplicates == 0, [c for c, n in Counter(configurations).items() if n > 1]
    # not even near ones: after the 2 design rounds, concurrent proposals of one optimizer keep apart
    # (measured 0.21 apart at the closest; 0.0 -- the same point -- with the pending points left out)
    assert closest_concurrent(trials[2 * PROCESSES:]) > MIN_SPREAD
    for start in range(0, len(trials), PROCESSES):  # balanced: each round of four concurrent trials splits 2 / 2
        round_ = Counter(t.params["optimizer"] for t in trials[start:start + PROCESSES])
        assert round_ == {"sgd": 2, "adam": 2}, (start // PROCESSES, round_)
