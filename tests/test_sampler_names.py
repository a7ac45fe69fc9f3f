"""Every sampler name a study file allows builds that sampler; any other name is refused, never CMA-ES."""

from __future__ import annotations

from typing import get_args

import optuna
import pytest
from optuna_integration import BoTorchSampler

from hpo2.errors import SettingsError
from hpo2.study.config import SamplerConfig
from hpo2.study.samplers import plain_sampler

EXPECTED = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler, "botorch": BoTorchSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "random": optuna.samplers.RandomSampler,
            "qmc": optuna.samplers.QMCSampler}  # fmt: skip


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_each_allowed_name_builds_its_own_sampler() -> None:
    names = get_args(SamplerConfig.model_fields["name"].annotation)
    assert set(names) == set(EXPECTED)
    for name in names:
        assert type(plain_sampler(SamplerConfig(name=name), seed=0)) is EXPECTED[name], name


def test_an_unknown_name_is_a_clear_error_not_cmaes() -> None:
    config = SamplerConfig.model_construct(name="cmaess", n_startup_trials=None)  # past validation, as a caller could
    expected = r"sampler.name: 'cmaess' is not a known sampler \(did you mean 'cmaes'\?\); allowed: tpe, gp, botorch,"
    with pytest.raises(SettingsError, match=expected + r" cmaes, random, qmc"):
        plain_sampler(config, seed=0)
