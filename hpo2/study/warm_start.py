"""Warm start: begin a study with the best configurations of an earlier one (the
same model on another dataset, a shorter budget, a narrower space).

``warm_start: NAME`` (an earlier study's name or file), ``warm_start: URL`` (an
Optuna storage holding one study) or ``warm_start: {study, storage, top_k}`` in a
study file, or ``hpo2 study run --warm-start ...``.  For each optimizer, the
``top_k`` (default 2) best complete trials of the earlier study (by its first
objective, in its direction) are enqueued before this study's paper defaults, so
they are its first trials.  Each is fitted to *this* study's space:

* an optimizer this study does not search: the configuration is skipped;
* a numeric setting outside this study's range: **clipped** to the nearer end
  (the earlier optimum lay at or past that end, so the end is the closest
  allowed point and keeps the direction it pointed to; integers are rounded
  first);
* a categorical setting whose value this study does not allow: the
  configuration is **skipped** (no choice is "nearest" to another; with a
  different choice it would be a different configuration);
* a setting the earlier trial did not search (it was fixed there, or is new):
  this study's paper default when inside its range, else drawn by the sampler;
  settings this study fixes are ignored (the fixed value applies).

Configurations that end up equal to each other, to a trial already in this
study, or that were enqueued by an earlier start (each carries the user
attribute ``hpo2.warm_start = "<study> trial <n>"``) are not enqueued again, so
a resumed study never repeats them.  Earlier studies are read through Optuna's
storages (rows, JSON; nothing is unpickled) and never written: the storage is
opened read-only (:func:`hpo2.study.storage.open_read_only`: a sqlite file through
a ``mode=ro`` connection, no table created), so a file that is not an Optuna
storage (an ``mlflow.db``) is refused unchanged; a sqlite or journal file that
does not exist is an error, not a new empty database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo2.common.redact import redact_url
from hpo2.errors import SettingsError
from hpo2.study.config import StudyConfig, WarmStartConfig, default_storage, load_study_config, storage_error
from hpo2.study.locate import find_study_file
from hpo2.study.space import OPTIMIZER_PARAM, OptimizerSpace, SearchSpace
from hpo2.study.storage import open_read_only

SOURCE_ATTR = "hpo2.warm_start"
CHANGES_ATTR = "hpo2.warm_start_changes"


@dataclass(frozen=True)
class Candidate:
    """One configuration to enqueue: its params in this study's space, where it came from, what was clipped."""

    params: dict[str, Any]
    source: str
    changes: tuple[str, ...] = ()


@dataclass
class WarmStart:
    """The configurations an earlier study gives this one, and what was skipped or clipped (one line each)."""

    source: str
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load(url: str, name: str | None, where: str) -> optuna.Study:
    """Study ``name`` (or the only study) in storage ``url``, created nowhere."""
    storage = open_read_only(url, where)
    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as exc:  # any driver error: server down, unreadable file
        raise storage_error(url, exc, where, hint="") from None
    if name is None:
        if len(names) != 1:
            raise SettingsError(
                f"{where} = {redact_url(url)!r} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                "name one: warm_start: {study: NAME, storage: URL}"
            )
        name = names[0]
    if name not in names:
        held = ", ".join(names) or "no study"
        raise SettingsError(f"warm_start.study = {name!r} is not in {redact_url(url)}; it holds: {held}")
    return optuna.load_study(study_name=name, storage=storage)


def source_study(warm: WarmStartConfig, study_file: Path) -> tuple[optuna.Study, str]:
    """The earlier study and its storage URL: ``warm.study`` in ``warm.storage``; else
    the study file ``warm.study`` names (a path beside ``study_file``, or a name as
    ``hpo2 study`` finds it) in its own storage; else the only study in ``warm.storage``."""
    if warm.storage is not None:
        return _load(warm.storage, warm.study, "warm_start.storage"), warm.storage
    assert warm.study is not None  # WarmStartConfig requires one of the two
    beside = study_file.parent / warm.study
    try:
        config, path = load_study_config(beside if beside.is_file() else find_study_file(warm.study))
    except SettingsError as exc:
        raise SettingsError(f"warm_start.study = {warm.study!r}: {exc}") from None
    url = default_storage(config, path)
    return _load(url, config.name, f"warm_start.study = {warm.study!r}, its storage"), url


def top_trials(study: optuna.Study, k: int) -> dict[str, list[FrozenTrial]]:
    """Per optimizer, its ``k`` best complete trials by the first objective (best first)."""
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    ranked: dict[str, list[FrozenTrial]] = {}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    complete = [t for t in trials if math.isfinite(t.values[0])]
    for t in sorted(complete, key=lambda t: (sign * t.values[0], t.number)):
        ranked.setdefault(str(t.params.get(OPTIMIZER_PARAM)), []).append(t)
    return {name: trials[:k] for name, trials in ranked.items()}


def fit_to_space(trial: FrozenTrial, space: OptimizerSpace) -> tuple[dict[str, Any] | None, list[str]]:
    """The trial's params in ``space`` (module docstring): ``(params, clipped)`` or ``(None, [why skipped])``."""
    defaults = space.default_params()
    params: dict[str, Any] = {OPTIMIZER_PARAM: space.name}
    clipped: list[str] = []
    for key, dist in space.distributions.items():
        if key not in trial.params:
            if key in defaults:
                params[key] = defaults[key]
            continue
        value = trial.params[key]
        if isinstance(dist, CategoricalDistribution):
            if value not in dist.choices:
                return None, [f"{key} = {value!r} is not among this study's choices {list(dist.choices)}"]
            params[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, [f"{key} = {value!r} is not a number, as this study's range needs"]
        assert isinstance(dist, FloatDistribution | IntDistribution)
        fitted = round(value) if isinstance(dist, IntDistribution) else float(value)
        fitted = min(max(fitted, dist.low), dist.high)
        if fitted != value:
            clipped.append(f"{key} {value!r} -> {fitted!r} (this study's range [{dist.low}, {dist.high}])")
        params[key] = fitted
    return params, clipped


def plan_warm_start(config: StudyConfig, study_file: Path, space: SearchSpace) -> WarmStart:
    """The configurations ``config.warm_start`` gives this study (nothing is written)."""
    warm = config.warm_start
    assert warm is not None
    earlier, url = source_study(warm, study_file)
    if earlier.study_name == config.name and url == default_storage(config, study_file):
        raise SettingsError(f"warm_start: {config.name!r} is this study itself; name an earlier study")
    plan = WarmStart(earlier.study_name)
    ranked = top_trials(earlier, warm.top_k)
    if not ranked:
        plan.notes.append(f"warm start: study {earlier.study_name!r} has no complete trial; nothing to start from")
    for name, trials in ranked.items():
        for trial in trials:
            source = f"{earlier.study_name} trial {trial.number}"
            if name not in space.optimizers:
                plan.notes.append(f"warm start: skipped {source} ({name} is not searched in this study)")
                continue
            params, changes = fit_to_space(trial, space.optimizers[name])
            if params is None:
                plan.notes.append(f"warm start: skipped {source} ({changes[0]})")
            elif any(c.params == params for c in plan.candidates):
                plan.notes.append(f"warm start: skipped {source} (the same configuration as another after clipping)")
            else:
                plan.candidates.append(Candidate(params, source, tuple(changes)))
                plan.notes += [f"warm start: {source} clipped: {change}" for change in changes]
    return plan


def enqueue_warm_start(study: optuna.Study, plan: WarmStart) -> int:
    """Enqueue the plan's configurations not yet in ``study`` (by source or by params); return how many."""
    trials = study.get_trials(deepcopy=False)
    started = {t.user_attrs.get(SOURCE_ATTR) for t in trials}
    seen = [t.params for t in trials] + [t.system_attrs.get("fixed_params", {}) for t in trials]
    added = 0
    for candidate in plan.candidates:
        if candidate.source in started or candidate.params in seen:
            continue
        attrs = {SOURCE_ATTR: candidate.source, CHANGES_ATTR: list(candidate.changes)}
        study.enqueue_trial(candidate.params, user_attrs=attrs)
        added += 1
    return added
