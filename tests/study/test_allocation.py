"""Optimizer allocation (balanced / adaptive) on synthetic per-optimizer objectives: no training."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest
from optuna.samplers import RandomSampler

from hpo2.errors import SettingsError
from hpo2.study.config import StudyConfig
from hpo2.study.samplers import PerOptimizerSampler, build_sampler
from hpo2.study.space import OPTIMIZER_PARAM, SearchSpace
from hpo2.train.config import validate

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAMES = ["sgd", "adam", "newton_cg", "lbfgs"]
#: adam is clearly the best optimizer: its worst configuration beats every other's best
OFFSETS = {"sgd": 2.0, "adam": 0.0, "newton_cg": 1.5, "lbfgs": 1.8}


def synthetic(trial: optuna.Trial, space: SearchSpace) -> float:
    """Offset of the optimizer plus a part in [0, 1) that varies from trial to trial (golden-ratio sequence)."""
    name, _ = space.suggest(trial)
    return OFFSETS[name] + (trial.number * 0.6180339887) % 1


def run(allocation: str, trials: int = 60, floor: float = 0.5, workers: int = 1) -> Counter[str]:
    """Trial counts per optimizer; ``workers`` sampler instances take turns on one storage."""
    config = StudyConfig(name="s", task="digits_mlp", optimizers=NAMES, sampler={"name": "gp", "seed": 7})
    space = SearchSpace(config)
    storage = optuna.storages.InMemoryStorage()
    studies = [
        optuna.create_study(
            storage=storage, study_name="s", load_if_exists=True, direction="minimize",
            sampler=PerOptimizerSampler(space, lambda s, n: RandomSampler(seed=s), seed=7, allocation=allocation,
                                        startup=1, defaults_enqueued=False, floor=floor),
        )
        for _ in range(workers)
    ]
    for number in range(trials):
        studies[number % workers].optimize(lambda t: synthetic(t, space), n_trials=1)
    return Counter(t.params[OPTIMIZER_PARAM] for t in studies[0].trials)


def test_balanced_allocation_gives_every_optimizer_the_same_count():
    assert run("balanced") == dict.fromkeys(NAMES, 15)


@pytest.mark.parametrize("workers", [1, 3])
def test_adaptive_allocation_gives_the_best_optimizer_most_trials_and_the_others_their_floor(workers):
    counts = run("adaptive", workers=workers)
    assert counts["adam"] > 30, counts  # more than half of 60
    floor = int(0.5 * 60 / len(NAMES))  # phi N / K with phi = 0.5
    assert all(counts[name] >= floor for name in NAMES), counts


def test_pending_trials_count_so_parallel_workers_spread_over_optimizers():
    """Four trials asked before any finishes (four workers) go to four optimizers."""
    config = StudyConfig(name="s", task="digits_mlp", optimizers=NAMES,
                         sampler={"name": "gp", "allocation": "balanced"})
    space = SearchSpace(config)
    study = optuna.create_study(sampler=PerOptimizerSampler(space, lambda s, n: RandomSampler(seed=s)))
    asked = [study.ask() for _ in NAMES]
    assert sorted(space.suggest(t)[0] for t in asked) == sorted(NAMES)


def test_design_points_come_first_then_adaptive_allocation():
    """Each optimizer gets its defaults trial plus its start-up trials before the bandit starts."""
    config = StudyConfig(name="s", task="digits_mlp", optimizers=NAMES, sampler={"name": "gp", "n_startup_trials": 2})
    space = SearchSpace(config)
    sampler = build_sampler(config, space)
    assert isinstance(sampler, PerOptimizerSampler) and sampler.design_points == 3
    study = optuna.create_study(sampler=PerOptimizerSampler(space, lambda s, n: RandomSampler(seed=s),
                                                            allocation="adaptive", startup=2))
    space.enqueue_defaults(study)
    study.optimize(lambda t: synthetic(t, space), n_trials=3 * len(NAMES))
    assert Counter(t.params[OPTIMIZER_PARAM] for t in study.trials) == dict.fromkeys(NAMES, 3)
    assert sum(bool(t.user_attrs.get("hpo2.paper_defaults")) for t in study.trials) == len(NAMES)


def test_allocation_defaults_and_refusals():
    assert StudyConfig(name="s", task="digits_mlp", sampler={"name": "gp"}).allocation == "adaptive"
    two = [{"metric": "valid_loss"}, {"metric": "wall_seconds"}]
    assert StudyConfig(name="s", task="digits_mlp", sampler={"name": "gp"}, objective=two).allocation == "balanced"
    with pytest.raises(SettingsError, match="sampler.allocation = 'adaptive' needs one objective"):
        validate(StudyConfig, {"name": "s", "task": "digits_mlp", "objective": two,
                               "sampler": {"name": "gp", "allocation": "adaptive"}}, "study.yaml")
    with pytest.raises(SettingsError, match="sampler 'tpe' picks the optimizer itself"):
        validate(StudyConfig, {"name": "s", "task": "digits_mlp", "sampler": {"name": "tpe", "allocation": "balanced"}},
                 "study.yaml")


class LowestPointSampler(optuna.samplers.BaseSampler):
    """A stand-in "model" whose every proposal is the lower corner of the space: easy to tell from a random draw."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return param_distribution.choices[0] if hasattr(param_distribution, "choices") else param_distribution.low


@pytest.mark.parametrize("fraction", [0.0, 0.2])
def test_random_fraction_replaces_that_share_of_model_proposals_after_the_design_points(fraction):
    config = StudyConfig(name="s", task="digits_mlp", optimizers=["adam"], sampler={"name": "gp"})
    space = SearchSpace(config)
    sampler = PerOptimizerSampler(space, lambda s, n: LowestPointSampler(), seed=4, startup=2, random_fraction=fraction)
    # with seed 4 the coin comes up "random" at trial 2, a design point: it must not count there
    assert (sampler._random_turn(2) is not None) == bool(fraction) and sampler.design_points == 3
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: synthetic(t, space), n_trials=63)
    design, after = study.trials[:3], study.trials[3:]
    lowest = {k: d.low for k, d in space.optimizers["adam"].distributions.items()}
    at_model = [all(t.params[k] == v for k, v in lowest.items()) for t in after]
    tagged = [bool(t.user_attrs.get("hpo2.random_proposal")) for t in after]
    assert not any(t.user_attrs.get("hpo2.random_proposal") for t in design)
    assert at_model == [not tag for tag in tagged]  # a random proposal never sits at the model's point
    assert abs(sum(tagged) - fraction * len(after)) <= 0.2 * len(after), sum(tagged)  # 60 coins


def test_random_fraction_is_refused_for_samplers_without_a_model_per_optimizer():
    with pytest.raises(SettingsError, match="sampler.random_fraction = 0.3 applies to the per-optimizer samplers"):
        validate(StudyConfig, {"name": "s", "task": "digits_mlp", "sampler": {"name": "tpe", "random_fraction": 0.3}},
                 "study.yaml")
    with pytest.raises(SettingsError, match="sampler.random_fraction"):
        validate(StudyConfig, {"name": "s", "task": "digits_mlp", "sampler": {"name": "gp", "random_fraction": 1}},
                 "study.yaml")
    config = StudyConfig(name="s", task="digits_mlp", sampler={"name": "gp", "random_fraction": 0.3})
    sampler = build_sampler(config, SearchSpace(config))
    assert isinstance(sampler, PerOptimizerSampler) and sampler._random_fraction == 0.3


def test_botorch_gp_treats_the_objective_as_deterministic():
    """hpo2's BoTorch GP reproduces its (deterministic) observations: BoTorch's default inferred noise
    smoothed improvements of a few percent of the spread away, the cause of its Hartmann-6 stall."""
    import torch

    from hpo2.study.botorch_candidates import LogEICandidates

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, generator=generator, dtype=torch.float64)
    y = (-((x - 0.3) ** 2).sum(-1, keepdim=True) + 0.05 * torch.sin(20 * x[:, :1])).to(torch.float64)
    model = LogEICandidates().fit(x, y)
    with torch.no_grad():
        mean = model.posterior(x).mean
    assert (mean - y).abs().max() < 1e-3 * y.std()


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_exceedances_count_the_top_quarter_of_finished_trials_in_the_study_direction(direction):
    from optuna.distributions import CategoricalDistribution
    from optuna.study import StudyDirection
    from optuna.trial import TrialState, create_trial

    from hpo2.study.allocation import exceedances

    sign = 1 if direction == "minimize" else -1
    dist = {OPTIMIZER_PARAM: CategoricalDistribution(NAMES)}
    trials = [create_trial(params={OPTIMIZER_PARAM: name}, distributions=dist, value=sign * (OFFSETS[name] + i / 10))
              for name in NAMES for i in range(3)]  # 12 trials: the best 3 are adam's
    trials.append(create_trial(params={OPTIMIZER_PARAM: "adam"}, distributions=dist, state=TrialState.PRUNED))
    successes, failures = exceedances(NAMES, trials, StudyDirection[direction.upper()])
    assert successes == {"sgd": 0, "adam": 3, "newton_cg": 0, "lbfgs": 0}
    assert failures == {"sgd": 3, "adam": 1, "newton_cg": 3, "lbfgs": 3}


def test_thompson_draws_differ_from_trial_to_trial_and_repeat_for_the_same_trial():
    """Two optimizers with equal Beta posteriors (1 exceedance, 3 misses each): the draw is seeded
    by the study seed and the trial number, so over 200 trial numbers each wins about half the
    time, and the same (seed, number) picks the same optimizer again."""
    from optuna.distributions import CategoricalDistribution
    from optuna.study import StudyDirection
    from optuna.trial import create_trial

    from hpo2.study.allocation import allocate

    names = ["sgd", "adam"]
    dist = {OPTIMIZER_PARAM: CategoricalDistribution(names)}
    values = {"sgd": [0.0, 0.5, 0.6, 0.9], "adam": [0.1, 0.55, 0.7, 0.95]}  # the best quarter: 0.0 and 0.1
    trials = [create_trial(params={OPTIMIZER_PARAM: n}, distributions=dist, value=v) for n in names for v in values[n]]

    def choose(number: int, seed: int = 3) -> str:
        return allocate("adaptive", names, trials, number, StudyDirection.MINIMIZE, design_points=1, floor=0.0,
                        seed=seed)

    chosen = [choose(number) for number in range(100, 300)]
    assert 0.35 < chosen.count("sgd") / len(chosen) < 0.65
    assert [choose(number) for number in range(100, 120)] == chosen[:20]
    assert [choose(number, seed=4) for number in range(100, 300)] != chosen
