"""The search space: the optimizer is a categorical choice (param ``optimizer``)
and its settings a conditional space, one Optuna param per setting named
``<optimizer>.<setting>`` (names never collide across optimizers, whose ranges
differ); a study file's ``sam`` and ``schedule`` entries add
``<optimizer>.sam.<setting>`` and ``<optimizer>.schedule.<setting>``, nested into
the settings' ``sam`` and ``schedule`` mappings.  Everything comes from each optimizer's own declaration
(:meth:`~hpo2.optim.settings.OptimizerSettings.search_space`) with the study
file's overrides."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from hpo2.optim.registry import ATTACHMENTS, get_spec, nest_attachments
from hpo2.optim.settings import Choice, FloatRange, IntRange
from hpo2.study.config import StudyConfig

OPTIMIZER_PARAM = "optimizer"
#: the defaults of the settings that attach to any optimizer, as flat keys (``sam.rho``, ``schedule.warmup``, ...)
ATTACHED_DEFAULTS = {f"{key}.{k}": v for key, model in ATTACHMENTS.items() for k, v in model.paper_defaults().items()}
#: a value within this share of its range from an end (of the log range, for a log-scaled setting) is at that end
EDGE_SHARE = 0.01


def to_distribution(dim: FloatRange | IntRange | Choice) -> BaseDistribution:
    if isinstance(dim, FloatRange):
        return FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, IntRange):
        return IntDistribution(dim.low, dim.high, log=dim.log)
    return CategoricalDistribution(list(dim.choices))


def _inside(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    assert isinstance(dist, FloatDistribution | IntDistribution), f"unexpected {type(dist).__name__}"
    return value is not None and dist.low <= value <= dist.high


@dataclass
class OptimizerSpace:
    """One optimizer's part of the space."""

    name: str
    dimensions: dict[str, FloatRange | IntRange | Choice]
    fixed: dict[str, Any]

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {f"{self.name}.{k}": to_distribution(d) for k, d in self.dimensions.items()}

    def defaults(self) -> dict[str, Any]:
        """Every setting's value when a trial does not draw it: fixed, else the paper default."""
        return {**get_spec(self.name).paper_defaults(), **ATTACHED_DEFAULTS, **self.fixed}

    def default_params(self) -> dict[str, Any]:
        """The paper defaults as params (those inside this study's ranges)."""
        defaults = self.defaults()
        params: dict[str, Any] = {OPTIMIZER_PARAM: self.name}
        for key, dist in self.distributions.items():
            value = defaults[key.split(".", 1)[1]]
            if _inside(dist, value):
                params[key] = value
        return params

    def settings_from_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Settings for the optimizer: the trial's params, then fixed values; a
        setting whose ``when`` condition is off keeps its default."""
        settings = dict(self.fixed)
        for key, dim in self.dimensions.items():
            full = f"{self.name}.{key}"
            if full not in params:
                continue
            if dim.when is not None:
                other, allowed = dim.when
                current = params.get(f"{self.name}.{other}", self.defaults()[other])
                if current not in allowed:
                    continue
            settings[key] = params[full]
        return nest_attachments(settings)


class SearchSpace:
    """The whole conditional space of a study."""

    def __init__(self, config: StudyConfig) -> None:
        self.optimizers = {c.name: OptimizerSpace(c.name, c.space(), c.fixed_settings()) for c in config.optimizers}

    @property
    def names(self) -> list[str]:
        return list(self.optimizers)

    def suggest(self, trial: optuna.Trial) -> tuple[str, dict[str, Any]]:
        """Suggest the optimizer, then each of its settings; return name and settings."""
        name = trial.suggest_categorical(OPTIMIZER_PARAM, self.names)
        space = self.optimizers[str(name)]
        params: dict[str, Any] = {}
        for key, dist in space.distributions.items():
            if isinstance(dist, FloatDistribution):
                params[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, IntDistribution):
                params[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log)
            else:
                assert isinstance(dist, CategoricalDistribution), f"{key}: unexpected {type(dist).__name__}"
                params[key] = trial.suggest_categorical(key, dist.choices)
        return str(name), space.settings_from_params(params)

    def enqueue_defaults(self, study: optuna.Study) -> int:
        """Enqueue each optimizer's paper defaults unless a trial already has them."""
        seen = [t.params for t in study.get_trials(deepcopy=False)] + [
            t.system_attrs.get("fixed_params", {}) for t in study.get_trials(deepcopy=False)
        ]
        added = 0
        for space in self.optimizers.values():
            params = space.default_params()
            if params not in seen:
                study.enqueue_trial(params, user_attrs={"hpo2.paper_defaults": True})
                added += 1
        return added

    def optimizer_config(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{"name", "settings"}`` of a finished trial's params (for export)."""
        name = params[OPTIMIZER_PARAM]
        return {"name": name, "settings": self.optimizers[name].settings_from_params(params)}


def range_end(dist: BaseDistribution, value: Any) -> Literal["low", "high"] | None:
    """Which end of ``dist``'s range ``value`` lies at: its position
    :math:`p = (f(v) - f(\\mathrm{low})) / (f(\\mathrm{high}) - f(\\mathrm{low}))`, with :math:`f = \\log`
    for a log-scaled range and the identity otherwise, is within :data:`EDGE_SHARE` of 0 or 1.
    None for a choice, and for a range of fewer than 3 integers (every value is an end)."""
    if not isinstance(dist, FloatDistribution | IntDistribution) or dist.high <= dist.low:
        return None
    if isinstance(dist, IntDistribution) and dist.high - dist.low < 2:
        return None
    scale = math.log if dist.log else float
    position = (scale(value) - scale(dist.low)) / (scale(dist.high) - scale(dist.low))
    if position <= EDGE_SHARE:
        return "low"
    return "high" if position >= 1 - EDGE_SHARE else None


def at_hard_limit(optimizer: str, setting: str, end: Literal["low", "high"], bound: float) -> bool:
    """Whether ``bound``, the ``end`` of a searched range, is also as far as the setting may go
    (its settings model's ``ge``/``gt``/``le``/``lt``): there is nothing to widen there."""
    try:
        field = get_spec(optimizer).settings.model_fields.get(setting)
    except Exception:  # noqa: BLE001 -- an optimizer this version no longer knows: no limit known
        return False
    if field is None:  # an attachment's setting (sam.rho, schedule.warmup): no model here
        return False
    for constraint in field.metadata:
        limit = getattr(constraint, "ge" if end == "low" else "le", None)
        if limit is None:
            limit = getattr(constraint, "gt" if end == "low" else "lt", None)
        if limit is not None and (bound <= limit if end == "low" else bound >= limit):
            return True
    return False


def edge_hints(trial: FrozenTrial) -> list[str]:
    """A line for each searched setting of ``trial`` at an end of its range (:func:`range_end`):
    the best value may lie beyond it.  Trial ``trial``'s own ranges are used (those it was
    drawn from), e.g. ``kfac damping = 0.0001 is at the low end of its range [0.0001, 10]: widen it``."""
    hints = []
    optimizer = trial.params.get(OPTIMIZER_PARAM)
    for key, dist in trial.distributions.items():
        value = trial.params.get(key)
        end = None if value is None else range_end(dist, value)
        if end is not None:
            assert isinstance(dist, FloatDistribution | IntDistribution), "range_end: numeric ranges only"
            setting = key.split(".", 1)[1] if key.startswith(f"{optimizer}.") else key
            if at_hard_limit(str(optimizer), setting, end, dist.low if end == "low" else dist.high):
                continue  # e.g. hessian_refresh = 1: the range already starts where the setting must
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            hints.append(f"{optimizer} {setting} = {shown} is at the {end} end of its range [{dist.low:g}, "
                         f"{dist.high:g}]: widen it (ranges.{setting} of {optimizer} in the study file)")  # fmt: skip
    return hints
