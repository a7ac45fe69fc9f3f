"""The samplers a study file may name, written once: ``SAMPLERS`` (name -> :class:`SamplerSpec`).

The study file's ``sampler.name`` (:class:`hpo2.study.config.SamplerConfig`), the sampler that
:func:`hpo2.study.samplers.build_sampler` builds and the tests all read this table, as the optimizers'
``REGISTRY`` is read.  Optuna is imported only when a sampler is built, so the study-file schema can
read the names without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler.

    ``build(seed, n_startup_trials, noisy)`` makes it (``noisy``: the trials draw their own training
    seeds, so the objective is noisy; see ``seeds`` in :class:`hpo2.study.config.StudyConfig`).
    ``per_optimizer``: it needs a fixed search space, so hpo2 allocates each trial's optimizer and
    proposes that optimizer's settings from a sampler fitted on its trials alone
    (:class:`hpo2.study.samplers.PerOptimizerSampler`).  ``startup``: its random trials before a model
    is used when it is built on its own (a per-optimizer sampler gets the optimizer's design points
    instead).  ``one_design``: every process of a study continues one seeded design, instead of
    drawing from a sampler stream of its own.  ``multi_objective``: it optimises several objectives.
    """

    name: str
    build: Callable[[int, int, bool], BaseSampler]
    per_optimizer: bool
    startup: int
    one_design: bool = False
    multi_objective: bool = True


def _tpe(seed: int, startup: int, noisy: bool) -> BaseSampler:
    """Optuna's TPE, multivariate with ``group`` (each optimizer's sub-space on its own trials) and constant liar."""
    from optuna.samplers import TPESampler

    return TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True)


def _gp(seed: int, startup: int, noisy: bool) -> BaseSampler:
    """Optuna's GPSampler: it infers the noise, and treats running trials as pending (qLogEI)."""
    from optuna.samplers import GPSampler

    return GPSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)


def _botorch(seed: int, startup: int, noisy: bool) -> BaseSampler:
    """optuna-integration's BoTorchSampler with hpo2's candidates (:mod:`hpo2.study.botorch_candidates`),
    running trials passed to it as pending points."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna_integration import BoTorchSampler

    from hpo2.study.botorch_candidates import LogEICandidates

    with warnings.catch_warnings():  # consider_running_trials is marked experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        return BoTorchSampler(seed=seed, n_startup_trials=startup, candidates_func=LogEICandidates(noisy=noisy),
                              consider_running_trials=True)


def _cmaes(seed: int, startup: int, noisy: bool) -> BaseSampler:
    """Optuna's CMA-ES."""
    from optuna.samplers import CmaEsSampler

    return CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)


def _random(seed: int, startup: int, noisy: bool) -> BaseSampler:
    """Independent uniform draws."""
    from optuna.samplers import RandomSampler

    return RandomSampler(seed=seed)


def _qmc(seed: int, startup: int, noisy: bool) -> BaseSampler:
    """Optuna's QMCSampler, scrambled (Owen scrambling of Sobol') so that the seed matters."""
    from optuna.samplers import QMCSampler

    return QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False)


#: every sampler a study file may name, in the order the docs list them (tpe, the default, first)
SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("tpe", _tpe, per_optimizer=False, startup=10),
        SamplerSpec("gp", _gp, per_optimizer=True, startup=5),
        SamplerSpec("botorch", _botorch, per_optimizer=True, startup=5),
        SamplerSpec("cmaes", _cmaes, per_optimizer=True, startup=1, multi_objective=False),
        SamplerSpec("random", _random, per_optimizer=False, startup=0),
        SamplerSpec("qmc", _qmc, per_optimizer=False, startup=0, one_design=True),
    )
}
