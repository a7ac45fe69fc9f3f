"""Hints about the search space: a best value at an end of its range."""

from __future__ import annotations

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import create_trial

from hpo2.study.space import edge_hints


def test_no_edge_hint_where_the_range_already_ends_at_the_settings_limit() -> None:
    """adahessian hessian_refresh = 1 in [1, 20] cannot be widened (it must be >= 1): no hint; lr can."""
    trial = create_trial(
        params={"optimizer": "adahessian", "adahessian.hessian_refresh": 1, "adahessian.lr": 1e-4},
        distributions={"optimizer": CategoricalDistribution(["adahessian"]),
                       "adahessian.hessian_refresh": IntDistribution(1, 20),
                       "adahessian.lr": FloatDistribution(1e-4, 1.0, log=True)},
        value=0.9)
    assert edge_hints(trial) == ["adahessian lr = 0.0001 is at the low end of its range [0.0001, 1]: widen it "
                                 "(ranges.lr of adahessian in the study file)"]
