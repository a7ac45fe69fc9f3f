"""Samplers, and how each handles the conditional space.

* ``tpe`` -- Optuna's TPE, multivariate with ``group=True`` (it models each
  optimizer's sub-space on the trials that used it) and constant liar; ``random``
  -- independent uniform draws.  Both take the conditional space natively.
* ``gp`` (Optuna's GPSampler), ``botorch`` (optuna-integration's BoTorchSampler)
  and ``cmaes`` need a fixed space: on a conditional space they model only the
  intersection (the optimizer name) and draw every setting at random.  hpo2 wraps
  them in :class:`PerOptimizerSampler`: the optimizer of each trial is allocated
  so that every optimizer gets the same number of trials (hpo2 compares
  optimizers under the same tuning budget), and that optimizer's settings are
  proposed *jointly* by the wrapped sampler fitted on the finished trials of that
  optimizer alone -- a fixed space per optimizer, so the GP / CMA-ES model every
  setting.
* ``qmc`` -- Optuna's QMCSampler: a space-filling design, not a model; it covers
  the optimizer choice and, being a design over the intersection space, draws the
  settings independently (its own fallback).  It is scrambled (Owen
  scrambling of the Sobol' sequence), so that the seed matters: unscrambled,
  Optuna's QMC gives every seed the same points.

Why this and not one sub-study per optimizer: one Optuna study keeps one trial
numbering, one pruner over all trials, resume, heartbeats and the dashboard as
Optuna users know them; only the proposal of settings is per optimizer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, get_args

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpo2.errors import SettingsError, did_you_mean
from hpo2.study.config import SamplerConfig, StudyConfig
from hpo2.study.space import OPTIMIZER_PARAM, SearchSpace

_STATE_PREFIX = "hpo2.sampler:"
_FINISHED = (TrialState.COMPLETE,)


class PerOptimizerSampler(BaseSampler):
    """Balanced optimizer allocation + joint per-optimizer proposals from ``make_sampler``.

    The wrapped sampler's own trial state (CMA-ES keeps its search distribution in
    trial system attributes) is saved on the real trial and given back to it on the
    next proposal, so stateful samplers keep learning across trials.
    """

    def __init__(self, space: SearchSpace, make_sampler: Callable[[int], BaseSampler], seed: int = 0) -> None:
        self._space = space
        self._make_sampler = make_sampler
        self._seed = seed
        self._proposals: dict[int, dict[str, Any]] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def _allocate(self, study: optuna.Study, trial: FrozenTrial) -> str:
        counts = Counter(
            t.params.get(OPTIMIZER_PARAM, t.system_attrs.get("fixed_params", {}).get(OPTIMIZER_PARAM))
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number
        )
        return min(self._space.names, key=lambda name: (counts[name], self._space.names.index(name)))

    def _propose(self, study: optuna.Study, trial: FrozenTrial, optimizer: str) -> dict[str, Any]:
        distributions = self._space.optimizers[optimizer].distributions
        history = [
            t for t in study.get_trials(deepcopy=False, states=_FINISHED)
            if t.params.get(OPTIMIZER_PARAM) == optimizer and all(k in t.params for k in distributions)
        ]
        shadow = optuna.create_study(directions=study.directions, sampler=self._make_sampler(self._seed + len(history)))
        shadow.add_trials(
            [
                optuna.trial.create_trial(
                    params={k: t.params[k] for k in distributions},
                    distributions=distributions,
                    values=t.values,
                    system_attrs={k[len(_STATE_PREFIX):]: v for k, v in t.system_attrs.items() if k.startswith(_STATE_PREFIX)},
                )
                for t in history
            ]
        )
        proposal = shadow.ask(fixed_distributions=distributions)
        for key, value in shadow.trials[-1].system_attrs.items():
            study._storage.set_trial_system_attr(trial._trial_id, _STATE_PREFIX + key, value)
        return proposal.params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if param_name == OPTIMIZER_PARAM:
            return self._allocate(study, trial)
        optimizer = param_name.split(".", 1)[0]
        if trial.number not in self._proposals:
            self._proposals[trial.number] = self._propose(study, trial, optimizer)
        return self._proposals[trial.number][param_name]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._proposals.pop(trial.number, None)


def plain_sampler(config: SamplerConfig, seed: int) -> BaseSampler:
    """The sampler ``config`` names, seeded, as hpo2 configures it for a fixed
    search space (TPE multivariate with ``group`` and constant liar; model samplers
    with ``n_startup_trials`` random trials first, 5 unless set)."""
    startup = config.n_startup_trials
    name = config.name
    if name == "tpe":
        kwargs: dict[str, Any] = {"seed": seed, "multivariate": True, "group": True, "constant_liar": True}
        if startup is not None:
            kwargs["n_startup_trials"] = startup
        return optuna.samplers.TPESampler(**kwargs)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup if startup is not None else 5,
                                         warn_independent_sampling=False)
    if name == "botorch":
        from optuna_integration import BoTorchSampler

        return BoTorchSampler(seed=seed, n_startup_trials=startup if startup is not None else 5)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup if startup is not None else 1,
                                            warn_independent_sampling=False)
    allowed = get_args(SamplerConfig.model_fields["name"].annotation)
    raise SettingsError(f"sampler.name: {name!r} is not a known sampler{did_you_mean(name, allowed)}; "
                        f"allowed: {', '.join(allowed)}")


def build_sampler(config: StudyConfig, space: SearchSpace) -> BaseSampler:
    """The study's sampler (see the module docstring)."""
    sampler = config.sampler
    seed = sampler.seed if sampler.seed is not None else config.seed
    if sampler.name in ("tpe", "random", "qmc"):
        return plain_sampler(sampler, seed)
    return PerOptimizerSampler(space, lambda s: plain_sampler(sampler, s), seed=seed)


def build_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()
