"""best_per_optimizer (hpo2.study.results) on an in-memory study: one best trial per optimizer name."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo2.study.results import best_per_optimizer
from hpo2.study.space import OPTIMIZER_PARAM


def test_best_per_optimizer_skips_trials_that_name_no_optimizer():
    study = optuna.create_study(direction="minimize")
    choice = CategoricalDistribution(["adam", "sgd"])
    for name, value in (("adam", 0.5), ("adam", 0.2), ("sgd", 0.9)):
        study.add_trial(
            optuna.trial.create_trial(
                params={OPTIMIZER_PARAM: name}, distributions={OPTIMIZER_PARAM: choice}, value=value
            )
        )
    # a trial added by hand outside the search space: no optimizer parameter
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.0, 1.0)},
                                              value=0.0))
    best = best_per_optimizer(study)
    assert sorted(best) == ["adam", "sgd"]  # sorted() is what the report and the progress table do with it
    assert best["adam"].value == 0.2 and best["sgd"].value == 0.9
