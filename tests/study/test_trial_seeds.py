"""``seeds: fixed | per_trial`` (issue 25, 2): which training seed each trial gets."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo2.errors import SettingsError
from hpo2.study.config import StudyConfig
from hpo2.study.recovery import retry_trial
from hpo2.study.runner import StudyRunner
from hpo2.train.config import validate_with_task


def _seeds(seeds: str, trials: int = 4) -> tuple[list[int], int]:
    """The seeds of ``trials`` trials, and the seed of a retry of the second one."""
    config = StudyConfig(name="s", task="digits_mlp", optimizers=["sgd"], seed=7, seeds=seeds)
    runner = StudyRunner(config, Path("study.yaml"))
    study = optuna.create_study()
    drawn = []
    for _ in range(trials):
        trial = study.ask()
        drawn.append(runner.trial_seed(trial))
        study.tell(trial, 0.0)
    retry_trial(study, 1)
    return drawn, runner.trial_seed(study.ask())


def test_fixed_seeds_give_every_trial_the_study_seed():
    assert _seeds("fixed") == ([7, 7, 7, 7], 7)


def test_per_trial_seeds_differ_per_trial_and_a_retry_keeps_the_seed_of_the_trial_it_retries():
    drawn, retried = _seeds("per_trial")
    assert len(set(drawn)) == 4 and 7 not in drawn
    assert retried == drawn[1]  # a resumed study reruns an interrupted trial as it would have run
    assert _seeds("per_trial")[0] == drawn  # reproducible from the study seed


def test_an_unknown_seeds_mode_is_one_clear_error():
    with pytest.raises(SettingsError, match="seeds") as caught:
        validate_with_task(StudyConfig, {"name": "s", "task": "digits_mlp", "seeds": "random"}, "study.yaml")
    assert "fixed" in str(caught.value) and "per_trial" in str(caught.value)


@pytest.mark.slow  # a real study: MLflow, two trainings
def test_a_per_trial_study_trains_each_trial_with_its_own_seed(tmp_path):
    """The same settings (the paper defaults, enqueued twice) trained under two trials' seeds differ."""
    from hpo2.study.config import load_study_config
    from hpo2.study.space import SearchSpace
    from tests.study.helpers import write_study

    config, file = load_study_config(write_study(tmp_path, optimizers=["sgd"], n_trials=2, seeds="per_trial",
                                                 curvature_diagnostics=False, budget={"steps": 5}))
    runner = StudyRunner(config, file).open()
    defaults = SearchSpace(config).optimizers["sgd"].default_params()
    runner.study.enqueue_trial(defaults)
    runner.study.enqueue_trial(defaults, skip_if_exists=False)
    study = runner.run()
    first, second = study.trials[:2]
    assert first.params == second.params
    assert len({config.seed, first.user_attrs["hpo2.seed"], second.user_attrs["hpo2.seed"]}) == 3
    assert first.value != second.value


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("seeds", ["fixed", "per_trial"])
def test_per_trial_seeds_make_the_botorch_model_noisy_and_fixed_ones_deterministic(seeds):
    from hpo2.study.samplers import build_sampler
    from hpo2.study.space import SearchSpace

    config = StudyConfig(name="s", task="digits_mlp", optimizers=["sgd"], sampler={"name": "botorch"}, seeds=seeds)
    botorch = build_sampler(config, SearchSpace(config))._make_sampler(0, 2)
    assert botorch._candidates_func.noisy == (seeds == "per_trial")
    assert botorch._consider_running_trials  # running trials reach it as pending points
