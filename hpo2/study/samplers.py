r"""Samplers, and how each handles the conditional space (the names: :data:`~hpo2.study.sampler_registry.SAMPLERS`).

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

**Workers that don't collide.**  Fitted on finished trials alone, two workers that
propose at the same moment see the same history and propose the same point (the
acquisition's local search starts from the same incumbent).  So a per-optimizer
proposal is made under a lock that every worker of the study shares (``lock``,
:func:`hpo2.study.locks.study_lock`), and written to the trial (system attribute
``hpo2.proposal``: the optimizer and its settings) before the lock is released;
every running trial's proposal enters the next one's model as a *pending point*:
Optuna's GPSampler takes running trials into a joint acquisition
(:math:`\mathrm{qLogEI}`: the improvement of the candidate and the pending points
together, by quasi-Monte Carlo over their joint posterior, so a candidate beside a
pending point gains nothing from it), and hpo2's BoTorch candidates pass them as
``X_pending`` (:mod:`hpo2.study.botorch_candidates`).  The
allocation is made under the same lock and counts a proposed trial for its
optimizer, so workers allocating together still balance.  CMA-ES takes no pending
points: it samples each generation's points independently from its search
distribution (distinct per process, from the sampler streams below), and a
running point carries no information for its mean and covariance update until its
value is told (a made-up value -- a liar -- would bias that update).

**Seeds and streams.**  A sampler seeded alike in two processes draws alike: two
workers, or a run and its resume, would replay each other's proposals.  So each
process that runs a study's trials (a ``study run``, a resume, a worker) claims the
study's next *sampler stream* (:func:`claim_stream`, counted in the study's system
attribute ``hpo2.sampler_streams``; each trial records the stream of the process
that ran it in ``hpo2.sampler_stream``), and its random state is seeded from
``sampler.seed`` and the stream (:func:`stream_seed`; stream 0, a study's first
process, keeps the seed itself).  The draws that depend on the trial number alone
-- the optimizer allocation, the ``random_fraction`` coin -- keep the seed, and so
does ``qmc``, whose one scrambled sequence every process continues (the study counts
its points).  What this makes reproducible: a study run the same way -- one worker,
the same ``--n-trials`` steps -- draws the same trials from the same seed.  With
several workers, which trials each stream draws depends on timing, so a parallel
study is reproducible as a distribution, not trial for trial.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpo2.errors import SettingsError, did_you_mean
from hpo2.study.allocation import PROPOSAL_ATTR, Allocation, allocate
from hpo2.study.config import SamplerConfig, StudyConfig
from hpo2.study.sampler_registry import SAMPLERS, SamplerSpec
from hpo2.study.space import OPTIMIZER_PARAM, SearchSpace

_STATE_PREFIX = "hpo2.sampler:"
#: the study system attribute counting the sampler streams claimed so far
STREAMS_ATTR = "hpo2.sampler_streams"
#: the trial system attribute naming the stream of the process that ran the trial
STREAM_ATTR = "hpo2.sampler_stream"


def claim_stream(study: optuna.Study) -> int:
    """The next sampler stream of ``study`` (0 for its first process), counted in the
    study so no later process gets it; call it under the study's init lock
    (:func:`hpo2.study.storage.study_init_lock`) so that processes starting together
    get different ones."""
    claimed = int(study._storage.get_study_system_attrs(study._study_id).get(STREAMS_ATTR, 0))
    study._storage.set_study_system_attr(study._study_id, STREAMS_ATTR, claimed + 1)
    return claimed


def stream_seed(seed: int, stream: int) -> int:
    """The seed of sampler stream ``stream``: ``seed`` itself for stream 0, else a 32-bit
    seed NumPy's ``SeedSequence`` derives from ``(seed, stream)`` (streams of one seed,
    and of neighbouring seeds, do not overlap as ``seed + stream`` would)."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, stream]).generate_state(1)[0])


def _known_params(trial: FrozenTrial) -> dict[str, Any]:
    """The params a running trial has or will have: those enqueued for it, then its proposal, then those set."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.system_attrs.get(PROPOSAL_ATTR, {}), **trial.params}


class PerOptimizerSampler(BaseSampler):
    """Optimizer allocation (:mod:`hpo2.study.allocation`) + joint per-optimizer proposals from ``make_sampler``.

    ``make_sampler(seed, n_startup_trials)`` builds one wrapped sampler per optimizer, kept for the
    process's life so that what it learns between proposals stays (Optuna's GPSampler starts each
    fit from the previous kernel parameters; a fresh sampler per proposal, as before, refitted from
    scratch).  Its ``n_startup_trials`` is the optimizer's design points: the paper
    defaults trial (when it finished) plus ``startup`` random ones, at least 2 so that a model is
    never fitted on one point.

    The wrapped sampler's own trial state (CMA-ES keeps its search distribution in
    trial system attributes) is saved on the real trial and given back to it on the
    next proposal, so stateful samplers keep learning across trials.

    ``random_fraction``: after the design points, each proposal is drawn uniformly
    at random instead of from the model with that probability
    (interleaved random search: SMAC interleaves random configurations, Hutter et al.,
    LION 2011; BOHB draws a third of them at random, Falkner et al., ICML 2018).  It
    bounds how long a model can keep refining one basin of a rugged objective; the
    coin is seeded by the study seed and the trial number, and such a trial is tagged
    with the user attribute ``hpo2.random_proposal``.

    ``stream``: this process's sampler stream (module docstring), which seeds the wrapped samplers.
    ``lock``: the lock every worker of the study shares (:func:`hpo2.study.locks.study_lock`), held
    while a trial's optimizer is allocated and its settings proposed and published (module docstring).
    """

    def __init__(
        self,
        space: SearchSpace,
        make_sampler: Callable[[int, int], BaseSampler],
        seed: int = 0,
        allocation: Allocation = "balanced",
        startup: int = 1,
        defaults_enqueued: bool = True,
        floor: float = 0.25,
        random_fraction: float = 0.0,
        stream: int = 0,
        lock: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self._space = space
        self._make_sampler = make_sampler
        self._seed = seed
        self._allocation = allocation
        self._startup = startup
        self._defaults_enqueued = defaults_enqueued
        self._floor = floor
        self._random_fraction = random_fraction
        self._stream = stream
        self._lock = lock
        self._thread_lock = threading.Lock()  # the study's threads (``jobs``) share this sampler
        self._samplers: dict[str, BaseSampler] = {}
        self._proposals: dict[int, dict[str, Any]] = {}

    @property
    def design_points(self) -> int:
        """Trials each optimizer gets before a model proposes its settings or adaptive allocation starts."""
        return max(2, self._startup + int(self._defaults_enqueued))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def _sampler_for(self, optimizer: str) -> BaseSampler:
        if optimizer not in self._samplers:
            index = self._space.names.index(optimizer)
            seed = stream_seed(self._seed + index, self._stream)
            self._samplers[optimizer] = self._make_sampler(seed, self.design_points)
        return self._samplers[optimizer]

    def _random_turn(self, trial_number: int) -> int | None:
        """A seed for a random proposal when this trial's coin says so (probability ``random_fraction``), else None."""
        if not self._random_fraction:
            return None
        rng = np.random.default_rng([self._seed % 2**32, trial_number, 1])  # not the allocation's stream
        return int(rng.integers(2**31)) if rng.random() < self._random_fraction else None

    def _propose(
        self, study: optuna.Study, trial: FrozenTrial, optimizer: str, trials: list[FrozenTrial]
    ) -> dict[str, Any]:
        """``optimizer``'s settings for ``trial`` from a sampler fitted on its finished ``trials``, the
        running ones pending (``trials``: the study's, read once per proposal)."""
        distributions = self._space.optimizers[optimizer].distributions
        history = [
            t for t in trials
            if t.state == TrialState.COMPLETE and t.params.get(OPTIMIZER_PARAM) == optimizer
            and all(k in t.params for k in distributions)
        ]
        pending = [
            known for t in trials
            if t.state == TrialState.RUNNING and t.number != trial.number
            and (known := _known_params(t)).get(OPTIMIZER_PARAM) == optimizer and all(k in known for k in distributions)
        ]
        random_seed = self._random_turn(trial.number) if len(history) >= self.design_points else None
        if random_seed is not None:
            study._storage.set_trial_user_attr(trial._trial_id, "hpo2.random_proposal", True)
            sampler: BaseSampler = optuna.samplers.RandomSampler(seed=random_seed)
            return optuna.create_study(sampler=sampler).ask(fixed_distributions=distributions).params
        shadow = self._shadow_study(study, optimizer, history, pending)
        proposal = shadow.ask(fixed_distributions=distributions)
        for key, value in shadow._storage.get_trial_system_attrs(proposal._trial_id).items():
            study._storage.set_trial_system_attr(trial._trial_id, _STATE_PREFIX + key, value)
        return proposal.params

    def _shadow_study(
        self, study: optuna.Study, optimizer: str, history: list[FrozenTrial], pending: list[dict[str, Any]]
    ) -> optuna.Study:
        """An in-memory study for ``optimizer``'s own sampler to propose from: its finished trials
        ``history`` (with the state the sampler kept in their system attributes) and, as RUNNING
        trials, the known params of its running ones ``pending``; ``optimizer``'s settings only."""
        distributions = self._space.optimizers[optimizer].distributions
        shadow = optuna.create_study(directions=study.directions, sampler=self._sampler_for(optimizer))
        shadow.add_trials(
            [
                optuna.trial.create_trial(
                    params={k: t.params[k] for k in distributions},
                    distributions=distributions,
                    values=t.values,
                    system_attrs={
                        k[len(_STATE_PREFIX):]: v for k, v in t.system_attrs.items() if k.startswith(_STATE_PREFIX)
                    },
                )
                for t in history
            ]
            + [
                optuna.trial.create_trial(state=TrialState.RUNNING, params={k: params[k] for k in distributions},
                                          distributions=distributions)
                for params in pending
            ]
        )
        return shadow

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if trial.number not in self._proposals:
            with self._thread_lock, self._lock():
                trials = study.get_trials(deepcopy=False)
                if param_name == OPTIMIZER_PARAM:
                    optimizer = allocate(self._allocation, self._space.names, trials, trial.number,
                                         study.directions[0], self.design_points, self._floor, self._seed)
                else:  # the optimizer was fixed (an enqueued trial): propose its settings
                    optimizer = param_name.split(".", 1)[0]
                proposal = {OPTIMIZER_PARAM: optimizer, **self._propose(study, trial, optimizer, trials)}
                study._storage.set_trial_system_attr(trial._trial_id, PROPOSAL_ATTR, proposal)
            self._proposals[trial.number] = proposal
        return self._proposals[trial.number][param_name]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._proposals.pop(trial.number, None)


def sampler_spec(name: str) -> SamplerSpec:
    """The registry's entry for ``name``; a :class:`~hpo2.errors.SettingsError` naming the allowed ones if none."""
    if name not in SAMPLERS:
        raise SettingsError(f"sampler.name: {name!r} is not a known sampler{did_you_mean(name, SAMPLERS)}; "
                            f"allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def plain_sampler(config: SamplerConfig, seed: int, n_startup_trials: int | None = None,
                  noisy: bool = False) -> BaseSampler:
    """The sampler ``config`` names (its :data:`~hpo2.study.sampler_registry.SAMPLERS` entry), seeded, as hpo2
    configures it for a fixed search space, with ``n_startup_trials`` random trials first: the argument, else
    the config's, else the sampler's own default; ``noisy``: the trials draw their own training seeds."""
    spec = sampler_spec(config.name)
    startup = next(n for n in (n_startup_trials, config.n_startup_trials, spec.startup) if n is not None)
    return spec.build(seed, startup, noisy)


def build_sampler(
    config: StudyConfig, space: SearchSpace, stream: int = 0,
    lock: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> BaseSampler:  # fmt: skip
    """The study's sampler for sampler stream ``stream``; ``lock``: the lock its workers share for
    proposals (:func:`hpo2.study.locks.study_lock`; see the module docstring)."""
    sampler = config.sampler
    spec = sampler_spec(sampler.name)
    seed = sampler.seed if sampler.seed is not None else config.seed
    noisy = config.seeds == "per_trial"
    if spec.one_design:  # one design for the whole study: every process continues it
        return plain_sampler(sampler, seed, noisy=noisy)
    if not spec.per_optimizer:
        return plain_sampler(sampler, stream_seed(seed, stream), noisy=noisy)
    return PerOptimizerSampler(
        space, lambda s, n: plain_sampler(sampler, s, n, noisy), seed=seed, allocation=config.allocation,
        startup=sampler.n_startup_trials if sampler.n_startup_trials is not None else 1,
        defaults_enqueued=config.enqueue_defaults, floor=sampler.allocation_floor,
        random_fraction=sampler.random_fraction, stream=stream, lock=lock,
    )


def build_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()
