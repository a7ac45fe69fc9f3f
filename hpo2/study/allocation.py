r"""Which optimizer the next trial goes to: ``balanced`` or ``adaptive`` allocation.

Both rules read the study's trials from storage and nothing else, so any number
of workers sharing one storage allocate consistently; a trial that is running or
waiting (enqueued) already counts for its optimizer.

Let :math:`K` optimizers have :math:`n_i` trials each (every state but the trial
being allocated), :math:`N = 1 + \sum_i n_i`, and let :math:`d` be the design
points every optimizer gets before any model is used (its paper defaults, when
enqueued, plus ``n_startup_trials`` random ones).

* **balanced** -- the optimizer with the fewest trials (ties: the study file's
  order).  Every optimizer gets the same budget: the fair comparison.
* **adaptive** -- for finding the best configuration.  In order:

  1. *design*: while some optimizer has :math:`n_i < d`, balanced;
  2. *floor*: an optimizer with :math:`n_i < \phi N / K` gets the trial (the
     one furthest below its floor), so no optimizer is ever starved: each keeps
     at least a share :math:`\phi / K` of the trials (``allocation_floor``
     :math:`\phi`, 0.25 by default);
  3. *Thompson sampling on threshold exceedances*: let :math:`T` be the best
     :math:`\lceil q M \rceil` values of the :math:`M` finished trials
     (:math:`q = 1/4`).  An optimizer's trial is a success if its value is in
     :math:`T` and a failure otherwise (pruned and failed trials are failures);
     with :math:`s_i` successes and :math:`f_i` failures draw
     :math:`\theta_i \sim \mathrm{Beta}(1 + s_i, 1 + f_i)` and give the trial to
     :math:`\arg\max_i \theta_i`.

  Counting exceedances of a high threshold rather than averaging values makes
  the bandit chase the best *tail* of each optimizer, which is what "find the
  best configuration" rewards (the max-k-armed bandit; Streeter & Smith, "A
  simple distribution-free approach to the max k-armed bandit problem", CP
  2006), and it is scale free: a diverging trial's huge loss counts as one
  failure, not as an outlier that swamps a mean.  Thompson sampling (Thompson
  1933; Agrawal & Goyal, "Analysis of Thompson sampling for the multi-armed
  bandit problem", COLT 2012) is randomised, so parallel workers that allocate at
  the same moment spread over the plausible winners instead of all picking one;
  the draw is seeded by the study seed and the trial number, so a run is
  reproducible.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo2.study.space import OPTIMIZER_PARAM

Allocation = Literal["balanced", "adaptive"]
#: the share of finished trials whose values count as successes
TOP_QUANTILE = 0.25
#: the trial system attribute holding the proposal made for a trial (``optimizer`` and its settings), written
#: before its params are (:class:`hpo2.study.samplers.PerOptimizerSampler`)
PROPOSAL_ATTR = "hpo2.proposal"


def optimizer_of(trial: FrozenTrial) -> str | None:
    """The optimizer a trial uses, or will use (an enqueued trial's fixed params, or the proposal made for it)."""
    name = trial.params.get(OPTIMIZER_PARAM)
    for planned in (trial.system_attrs.get("fixed_params", {}), trial.system_attrs.get(PROPOSAL_ATTR, {})):
        name = planned.get(OPTIMIZER_PARAM) if name is None else name
    return None if name is None else str(name)


def balanced_choice(names: Sequence[str], counts: Counter[str]) -> str:
    """The optimizer with the fewest trials; ties go to the earlier name."""
    return min(names, key=lambda name: (counts[name], names.index(name)))


def exceedances(
    names: Sequence[str], trials: Sequence[FrozenTrial], direction: StudyDirection
) -> tuple[dict[str, int], dict[str, int]]:
    """Successes and failures per optimizer (see the module docstring)."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    values = sorted(
        (t.values[0] for t in finished if t.state == TrialState.COMPLETE and t.values),
        reverse=direction == StudyDirection.MAXIMIZE,
    )
    successes = dict.fromkeys(names, 0)
    failures = dict.fromkeys(names, 0)
    if not values:
        return successes, failures
    threshold = values[math.ceil(TOP_QUANTILE * len(values)) - 1]
    for t in finished:
        name = optimizer_of(t)
        if name not in successes:
            continue
        complete = t.state == TrialState.COMPLETE and bool(t.values)
        maximize = direction == StudyDirection.MAXIMIZE
        good = complete and (t.values[0] >= threshold if maximize else t.values[0] <= threshold)
        if good:
            successes[name] += 1
        else:
            failures[name] += 1
    return successes, failures


def allocate(
    rule: Allocation,
    names: Sequence[str],
    trials: Sequence[FrozenTrial],
    number: int,
    direction: StudyDirection,
    design_points: int,
    floor: float,
    seed: int,
) -> str:
    """The optimizer for trial ``number`` under ``rule`` (see the module docstring).

    ``trials`` are all the study's trials (any state); ``design_points`` is
    :math:`d`, ``floor`` is :math:`\\phi`.
    """
    others = [t for t in trials if t.number != number]
    counts: Counter[str] = Counter(name for t in others if (name := optimizer_of(t)) is not None)
    if rule == "balanced" or any(counts[name] < design_points for name in names):
        return balanced_choice(names, counts)
    total = 1 + sum(counts[name] for name in names)
    share = floor * total / len(names)
    starved = [name for name in names if counts[name] < share]
    if starved:
        return balanced_choice(starved, counts)
    successes, failures = exceedances(names, others, direction)
    rng = np.random.default_rng([seed % 2**32, number])
    draws = [rng.beta(1 + successes[name], 1 + failures[name]) for name in names]
    return names[int(np.argmax(draws))]
