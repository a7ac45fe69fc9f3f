"""The confirmation stage: the search's finalists rerun on new seeds, the winner chosen by the mean.

A trial's value depends on its seed, so the best single value of a search is biased
upwards (the winner's curse) and a tie between two trials is broken by noise.  After
the search, as DeepOBS prescribes (Schneider, Balles & Hennig, *DeepOBS: A Deep
Learning Optimizer Benchmark Suite*, ICLR 2019, sec. 3: rerun the tuned setting on
several seeds, report mean and spread), the **finalists** -- the search's overall
``top_k`` configurations and the best configuration of each of the ``top_k`` best
optimizers -- are rerun on ``seeds`` new seeds each, distinct from every seed the
search used (:func:`confirm_seeds`; a finalist's search value is not reused: it is
the biased one).

For finalist :math:`c` with values :math:`x_1..x_n` over its seeds, the mean
:math:`\\bar x`, the sample standard deviation :math:`s` and the 95% t-interval
:math:`\\bar x \\pm t_{0.975,\\,n-1}\\, s/\\sqrt n` are computed
(:func:`t_interval`).  The **winner** has the best mean; every finalist whose interval
overlaps the winner's is a **tie** (the data cannot tell them apart), and among the
winner and its ties the cheapest is **recommended**: the least mean time-to-target
(seconds; a finalist that missed the target on any seed has none), then the least
gradient-equivalents to the target, then in all.  A finalist that diverged or failed
on a seed, or has fewer than two values, is shown but cannot win.

**Storage.**  The runs are the trials of a second Optuna study, ``<name>.confirm``, in
the search's storage: each is enqueued with the finalist's params and the user
attributes ``hpo2.confirm_of`` (the search trial) and ``hpo2.seed``, so the search's
samplers, its ``n_trials`` and its best trial never see them, and every recovery of a
search trial (heartbeat retry, Ctrl-C, storage faults) works unchanged.  Planning
(:func:`plan_confirmation`) enqueues only the (finalist, seed) pairs not yet in the
study, so a rerun after a kill runs exactly the missing ones; the seeds are kept in
the study's ``hpo2.confirm_seeds`` attribute.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo2.study.budget import retried_trial_numbers
from hpo2.study.config import StudyConfig
from hpo2.study.results import best_per_optimizer, best_trials, ranked, round_values, target_text
from hpo2.study.space import OPTIMIZER_PARAM
from hpo2.study.trial_reporter import SEED_ATTR

CONFIRM_SUFFIX = ".confirm"
#: a confirmation run's attribute naming the search trial it reruns
CONFIRM_OF_ATTR = "hpo2.confirm_of"
#: the confirmation study's attribute listing its seeds
SEEDS_ATTR = "hpo2.confirm_seeds"
#: confirmation seeds start here above the study's seed: far from the search's own
SEED_OFFSET = 1_000_000
CONFIDENCE = 0.95


def confirm_study_name(name: str) -> str:
    """The Optuna study holding the confirmation runs of study ``name``."""
    return f"{name}{CONFIRM_SUFFIX}"


def finalists(study: optuna.Study, top_k: int) -> list[FrozenTrial]:
    """The configurations to confirm, best first: the overall ``top_k`` complete trials
    and the best trial of each of the ``top_k`` best optimizers; a configuration met
    twice (the same params) counts once, as its earlier trial."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if OPTIMIZER_PARAM in t.params]  # fmt: skip
    overall = ranked(study, complete)[:top_k]
    per_optimizer = ranked(study, list(best_per_optimizer(study).values()))[:top_k]
    chosen: dict[tuple[tuple[str, Any], ...], FrozenTrial] = {}
    for trial in ranked(study, [*overall, *per_optimizer]):
        chosen.setdefault(tuple(sorted(trial.params.items())), trial)
    return ranked(study, list({t.number: t for t in chosen.values()}.values()))


def confirm_seeds(config: StudyConfig, search: Sequence[FrozenTrial], kept: Sequence[int]) -> list[int]:
    """``config.confirm.seeds`` seeds: those ``kept`` from an earlier plan first, then the
    integers from ``config.seed + SEED_OFFSET`` up that no search trial trained with."""
    used = {config.seed, *(t.user_attrs[SEED_ATTR] for t in search if SEED_ATTR in t.user_attrs)}
    seeds = list(kept)[: config.confirm.seeds]
    candidate = config.seed + SEED_OFFSET
    while len(seeds) < config.confirm.seeds:
        if candidate not in used and candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds


def open_confirm_study(search: optuna.Study) -> optuna.Study:
    """Create or load the confirmation study beside ``search`` (same storage and direction;
    every param is fixed, so its sampler draws nothing, and nothing is pruned)."""
    return optuna.create_study(
        study_name=confirm_study_name(search.study_name), storage=search._storage,
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=optuna.pruners.NopPruner(),
        direction=search.direction, load_if_exists=True,
    )  # fmt: skip


def load_confirm_study(search: optuna.Study) -> optuna.Study | None:
    """The confirmation study of ``search``, or None when its stage never started."""
    try:
        return optuna.load_study(study_name=confirm_study_name(search.study_name), storage=search._storage)
    except KeyError:
        return None


def planned_runs(confirm: optuna.Study) -> set[tuple[int, int]]:
    """The (search trial, seed) pairs enqueued in the confirmation study."""
    return {(t.user_attrs[CONFIRM_OF_ATTR], t.user_attrs[SEED_ATTR]) for t in confirm.get_trials(deepcopy=False)
            if CONFIRM_OF_ATTR in t.user_attrs}  # fmt: skip


def plan_confirmation(search: optuna.Study, confirm: optuna.Study, config: StudyConfig) -> int:
    """Enqueue the confirmation runs not in ``confirm`` yet (call it under the study's init
    lock, so workers do not both enqueue one run); returns how many runs the plan has."""
    trials = search.get_trials(deepcopy=False)
    seeds = confirm_seeds(config, trials, confirm.user_attrs.get(SEEDS_ATTR, []))
    confirm.set_user_attr(SEEDS_ATTR, seeds)
    have = planned_runs(confirm)
    for finalist in finalists(search, config.confirm.top_k):
        for seed in seeds:
            if (finalist.number, seed) not in have:
                confirm.enqueue_trial(finalist.params, user_attrs={CONFIRM_OF_ATTR: finalist.number, SEED_ATTR: seed})
                have.add((finalist.number, seed))
    return len(have)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the two-sided t-interval
    :math:`\\bar x \\pm t_{(1+c)/2,\\,n-1}\\, s/\\sqrt n` of ``values`` (two at least).

    Examples:
        >>> [round(v, 4) for v in t_interval([1.0, 2.0, 3.0])]
        [2.0, 1.0, -0.4841, 4.4841]
    """
    from scipy import stats  # noqa: PLC0415 -- scipy.stats takes a second to import: only when a stage is summarized

    mean, std = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


@dataclass
class Confirmed:
    """One finalist's confirmation runs and what they show."""

    trial: FrozenTrial  # the search trial it reruns
    seeds: list[int] = field(default_factory=list)  # of the complete runs
    values: list[float] = field(default_factory=list)
    planned: int = 0
    finished: int = 0
    failed: list[str] = field(default_factory=list)  # "seed S: diverged (reason)"
    time_to_target: list[float | None] = field(default_factory=list)
    grad_to_target: list[float | None] = field(default_factory=list)
    grad_equivalents: list[float] = field(default_factory=list)

    @property
    def optimizer(self) -> str:
        return str(self.trial.params.get(OPTIMIZER_PARAM))

    @property
    def eligible(self) -> bool:
        """Every run finished and complete, two at least: it may win."""
        return not self.failed and self.finished == self.planned and len(self.values) >= 2

    @property
    def interval(self) -> tuple[float, float, float, float]:
        """Mean, standard deviation and 95% interval (NaN for fewer than two values)."""
        if len(self.values) < 2:
            mean = self.values[0] if self.values else math.nan
            return mean, math.nan, math.nan, math.nan
        return t_interval(self.values)

    def mean_to_target(self, costs: list[float | None]) -> float:
        """The mean cost to the target over the seeds; infinite if a seed missed it."""
        reached = [c for c in costs if c is not None]
        return statistics.fmean(reached) if costs and len(reached) == len(costs) else math.inf

    @property
    def cost(self) -> tuple[float, float, float]:
        """What "cheaper" compares: time-to-target, gradient-equivalents to target, in all."""
        total = statistics.fmean(self.grad_equivalents) if self.grad_equivalents else math.inf
        return self.mean_to_target(self.time_to_target), self.mean_to_target(self.grad_to_target), total

    def text(self) -> str:
        """``0.9537 ± 0.0041 (95% CI 0.9435..0.9639, 3 seeds)``."""
        mean, std, low, high = self.interval
        if len(self.values) < 2:
            return f"{round_values(self.values)} ({len(self.values)} seed)"
        return f"{mean:.5g} ± {std:.2g} (95% CI {low:.5g}..{high:.5g}, {len(self.values)} seeds)"


@dataclass
class Confirmation:
    """The confirmation stage's outcome (:func:`summarize`)."""

    metric: str
    target: str
    seeds: list[int]
    maximize: bool
    configs: list[Confirmed]  # best mean first
    planned: int
    finished: int
    winner: Confirmed | None = None
    ties: list[Confirmed] = field(default_factory=list)
    recommended: Confirmed | None = None
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.planned > 0 and self.finished >= self.planned


def _runs(confirm: optuna.Study, search: optuna.Study) -> dict[int, Confirmed]:
    """The confirmation runs grouped by the search trial they rerun (retried failures left out)."""
    trials = confirm.get_trials(deepcopy=False)
    retried = retried_trial_numbers(trials)
    by_number = {t.number: t for t in search.get_trials(deepcopy=False)}
    groups: dict[int, Confirmed] = {}
    for run in trials:
        if CONFIRM_OF_ATTR not in run.user_attrs or (run.state == TrialState.FAIL and run.number in retried):
            continue
        of = run.user_attrs[CONFIRM_OF_ATTR]
        entry = groups.setdefault(of, Confirmed(by_number[of]))
        entry.planned += 1
        if run.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        entry.finished += 1
        seed = run.user_attrs[SEED_ATTR]
        if run.state != TrialState.COMPLETE:
            status = run.user_attrs.get("hpo2.status", run.state.name.lower())
            entry.failed.append(f"seed {seed}: {status} ({run.user_attrs.get('hpo2.reason', '')})")
            continue
        entry.seeds.append(seed)
        entry.values.append(run.values[0])
        entry.time_to_target.append(run.user_attrs.get("hpo2.time_to_target_seconds"))
        entry.grad_to_target.append(run.user_attrs.get("hpo2.time_to_target_grad_equivalents"))
        entry.grad_equivalents.append(run.user_attrs.get("hpo2.grad_equivalents", math.inf))
    return groups


def summarize(search: optuna.Study, confirm: optuna.Study | None, metric: str, target: str) -> Confirmation | None:
    """The confirmation of ``search`` (None if its stage never planned a run): the winner
    by mean, its ties and the recommended one with the reason, once every run finished."""
    if confirm is None:
        return None
    groups = _runs(confirm, search)
    if not groups:
        return None
    maximize = search.direction == optuna.study.StudyDirection.MAXIMIZE
    sign = -1.0 if maximize else 1.0
    configs = sorted(groups.values(), key=lambda c: (not c.eligible, _rank_value(sign * c.interval[0]), c.trial.number))
    outcome = Confirmation(metric, target, list(confirm.user_attrs.get(SEEDS_ATTR, [])), maximize, configs,
                           sum(c.planned for c in configs), sum(c.finished for c in configs))  # fmt: skip
    eligible = [c for c in configs if c.eligible]
    if not outcome.done or not eligible:
        return outcome
    winner = eligible[0]
    _, _, low, high = winner.interval
    outcome.winner = winner
    outcome.ties = [c for c in eligible[1:] if c.interval[2] <= high and low <= c.interval[3]]
    outcome.recommended = min([winner, *outcome.ties], key=lambda c: c.cost)  # the winner on equal cost
    outcome.reason = _reason(outcome)
    return outcome


def _rank_value(value: float) -> float:
    """A mean to sort by, smaller first; a finalist without a value last."""
    return value if math.isfinite(value) else math.inf


def _reason(outcome: Confirmation) -> str:
    """Why the recommended configuration was chosen, in one sentence."""
    winner, pick, ties = outcome.winner, outcome.recommended, outcome.ties
    assert winner is not None and pick is not None, "only asked once a winner is chosen"
    best = f"the best mean {outcome.metric} over {len(winner.values)} new seeds"
    if len([c for c in outcome.configs if c.eligible]) == 1:
        return f"{best}; the only finalist that completed every seed"
    if not ties:
        return f"{best}, and no other finalist's 95% interval overlaps it"
    named = ", ".join(f"trial {c.trial.number} ({c.optimizer})" for c in ties)
    if pick is winner:
        return f"{best}; tied with {named} (95% intervals overlap), none of them cheaper"
    return (f"tied with the best mean (trial {winner.trial.number}, {winner.optimizer}: {winner.text()}; 95% "
            f"intervals overlap) and cheaper: {_cheaper(pick, winner, outcome.target)}")


def _cheaper(pick: Confirmed, other: Confirmed, target: str) -> str:
    """How ``pick`` is cheaper than ``other``: the first cost where they differ."""
    labels = (f"time to target ({target})", f"gradient-equivalents to target ({target})", "gradient-equivalents")
    units = (" s", "", "")
    for label, unit, mine, theirs in zip(labels, units, pick.cost, other.cost, strict=True):
        if mine != theirs:
            shown = f"{theirs:.4g}{unit}" if math.isfinite(theirs) else "not reached on every seed"
            return f"mean {label} {mine:.4g}{unit} against {shown}"
    return "equal cost"


def confirmation_of(study: optuna.Study, config: StudyConfig) -> Confirmation | None:
    """The confirmation of ``study`` as far as it got (None: off, or never started)."""
    if not config.confirms:
        return None
    return summarize(study, load_confirm_study(study), config.objective[0].metric, target_text(config))


def recommended_trial(study: optuna.Study, outcome: Confirmation | None) -> FrozenTrial | None:
    """The configuration to reuse: the confirmation's recommendation, else the search's best."""
    if outcome is not None and outcome.recommended is not None:
        return outcome.recommended.trial
    best = best_trials(study)
    return best[0] if best else None


def export_block(outcome: Confirmation | None, trial: FrozenTrial) -> dict[str, Any] | None:
    """What an exported config says of its confirmation: the seeds and values, mean ± std, the
    95% interval, the costs to the target it was measured against, and why it was chosen."""
    if outcome is None or outcome.recommended is None or outcome.recommended.trial.number != trial.number:
        return None
    pick = outcome.recommended
    mean, std, low, high = pick.interval
    ttt, grad, total = pick.cost
    return {"metric": outcome.metric, "mean": mean, "std": std, "ci95": [low, high], "seeds": pick.seeds,
            "values": pick.values, "target": outcome.target,
            "time_to_target_seconds": ttt if math.isfinite(ttt) else None,
            "grad_equivalents_to_target": grad if math.isfinite(grad) else None,
            "grad_equivalents": total, "winner_trial": outcome.winner.trial.number if outcome.winner else None,
            "ties": [c.trial.number for c in outcome.ties], "reason": outcome.reason}  # fmt: skip


def confirmation_left(study: optuna.Study, config: StudyConfig) -> int:
    """Confirmation runs the study still owes: planned but unfinished, or not planned yet
    (0 when the stage is off or complete); nothing is written."""
    if not config.confirms or not best_trials(study):
        return 0
    confirm = load_confirm_study(study)
    kept = confirm.user_attrs.get(SEEDS_ATTR, []) if confirm is not None else []
    seeds = confirm_seeds(config, study.get_trials(deepcopy=False), kept)
    wanted = {(f.number, s) for f in finalists(study, config.confirm.top_k) for s in seeds}
    outcome = summarize(study, confirm, config.objective[0].metric, "") if confirm is not None else None
    unfinished = 0 if outcome is None else outcome.planned - outcome.finished
    return len(wanted - (planned_runs(confirm) if confirm is not None else set())) + unfinished
