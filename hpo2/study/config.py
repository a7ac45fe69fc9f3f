"""The study file (``studies/*.yaml``): a pydantic schema with defaults that make a
three-line file work::

    name: quick
    task: digits_mlp
    n_trials: 12

Every other field has a default: all registered optimizers (first-order
baselines included), the TPE sampler, the median pruner, a 2-epoch budget, the
task's own metric and direction, sqlite storage and MLflow tracking in files
beside the study file.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from hpo2.common.redact import redact_text, redact_url
from hpo2.errors import SettingsError, did_you_mean
from hpo2.optim.registry import ATTACHMENTS, REGISTRY, get_spec, load_config_file
from hpo2.optim.sam import SAM_KEY
from hpo2.optim.schedules import SCHEDULE_KEY
from hpo2.optim.settings import Choice, FloatRange, IntRange, SearchDimension
from hpo2.study.sampler_registry import SAMPLERS
from hpo2.tasks.source import TaskSection
from hpo2.train.config import looks_like_suite_file, suite_file_error, validate_with_task
from hpo2.train.loop import MAX_SECONDS, Budget, Device

MAX_TRIALS = 1_000_000
MAX_NAME = 100


def check_name(value: str) -> str:
    """A study's (or suite's) name: it names files and MLflow runs."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise ValueError("use letters, digits, '_', '.', '-' (it names files and MLflow runs)")
    if len(value) > MAX_NAME:
        raise ValueError(f"{len(value)} characters; at most {MAX_NAME} (it names files and MLflow runs)")
    if value.endswith(".confirm"):
        raise ValueError("a name ending in '.confirm' is taken by a study's confirmation stage; choose another")
    return value


#: a study's or suite's name (letters, digits, '_', '.', '-'; at most MAX_NAME characters)
StudyName = Annotated[str, AfterValidator(check_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def override_dimension(
    where: str, value: list[Any], dim: SearchDimension, settings: type[BaseModel], key: str
) -> SearchDimension:
    """``dim`` narrowed to a study file's ``[low, high]`` or list of choices.

    Refused, with a ValueError naming ``where``, the value and what is allowed: a
    choice outside the declared ones, or a ``[low, high]`` that is not two finite
    numbers with ``low < high`` each passing the setting's own pydantic constraints
    in ``settings`` (``momentum: [0.5, 1.5]`` fails ``momentum < 1`` at load time,
    not in every trial)."""
    shown = f"{where} = {value!r}"
    if isinstance(dim, Choice):
        if not value or any(v not in dim.choices for v in value):
            raise ValueError(f"{shown}: choices must be a non-empty subset of {list(dim.choices)}")
        return Choice(tuple(value), dim.when)
    if len(value) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{shown}: give [low, high], two numbers with low < high")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{shown}: both ends must be finite numbers (no .inf or .nan)")
    if not value[0] < value[1]:
        raise ValueError(f"{shown}: give [low, high] with low < high")
    field = settings.model_fields[key]
    # Annotated[...] is built at run time from the field's own constraints; mypy checks only static forms.
    constraints: TypeAdapter[Any] = TypeAdapter(Annotated[(field.annotation, *field.metadata)])  # type: ignore[arg-type]  # run-time Annotated form
    for end, v in zip(("low", "high"), value):
        try:
            constraints.validate_python(v)
        except ValidationError as exc:
            raise ValueError(f"{shown}: {end} = {v!r} is not a valid {key} ({exc.errors()[0]['msg']})") from None
    if dim.log and value[0] <= 0:
        raise ValueError(f"{shown}: {key} is searched on a log scale, so low must be > 0")
    if isinstance(dim, IntRange):
        return IntRange(int(value[0]), int(value[1]), dim.log, dim.when)
    return FloatRange(float(value[0]), float(value[1]), dim.log, dim.when)


class OptimizerChoice(Strict):
    """One optimizer to search over, with optional range overrides and fixed settings.

    ``sam`` wraps every trial of this optimizer in SAM (:mod:`hpo2.optim.sam`) and
    ``schedule`` gives it a learning-rate schedule (:mod:`hpo2.optim.schedules`),
    the same way: ``true`` searches the declared space (SAM: ``rho`` on a log range,
    ``adaptive``; schedule: ``warmup``, ``decay``, ``final_fraction``); a mapping such
    as ``{rho: [0.01, 0.5], adaptive: false}`` or ``{warmup: [0.0, 0.1], decay: cosine}``
    searches the settings given as a list (``[low, high]`` or choices) and fixes the
    others given.  The search params are ``<optimizer>.sam.<setting>`` and
    ``<optimizer>.schedule.<setting>``.
    """

    name: str
    ranges: dict[str, list[Any]] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    sam: bool | dict[str, Any] = False
    schedule: bool | dict[str, Any] = False

    @model_validator(mode="after")
    def _check(self) -> OptimizerChoice:
        spec = get_spec(self.name, "optimizers[].name")
        space = spec.search_space()
        spec.settings.refuse_renamed(self.ranges, "ranges")
        for key, value in self.ranges.items():
            if key not in space:
                raise ValueError(
                    f"ranges.{key}: {key!r} is not a searched setting of {self.name}{did_you_mean(key, space)}; "
                    f"allowed: {', '.join(space)}"
                )
            override_dimension(f"ranges.{key}", value, space[key], spec.settings, key)
        spec.settings.parse(self.fixed, where="fixed")
        self.attached_space()
        return self

    def attached_space(self) -> tuple[dict[str, FloatRange | IntRange | Choice], dict[str, Any]]:
        """The searched dimensions and fixed values of SAM and the schedule, keyed
        ``sam.<setting>`` / ``schedule.<setting>`` (a condition on another of their
        settings names it so too)."""
        dims: dict[str, FloatRange | IntRange | Choice] = {}
        fixed: dict[str, Any] = {}
        for key, choice in ((SAM_KEY, self.sam), (SCHEDULE_KEY, self.schedule)):
            part_dims, part_fixed = attached_part(key, choice)
            dims.update({f"{key}.{k}": d for k, d in part_dims.items()})
            fixed.update({f"{key}.{k}": v for k, v in part_fixed.items()})
        return dims, fixed

    def fixed_settings(self) -> dict[str, Any]:
        """The fixed settings, SAM's and the schedule's fixed ones included (``sam.<setting>``, ...)."""
        return {**self.fixed, **self.attached_space()[1]}

    def space(self) -> dict[str, FloatRange | IntRange | Choice]:
        """The declared space with this study's overrides applied and fixed settings removed."""
        spec = get_spec(self.name)
        space = dict(spec.search_space())
        for key, value in self.ranges.items():
            space[key] = override_dimension(f"ranges.{key}", value, space[key], spec.settings, key)
        return {**{k: v for k, v in space.items() if k not in self.fixed}, **self.attached_space()[0]}


def attached_part(
    key: str, choice: bool | dict[str, Any]
) -> tuple[dict[str, FloatRange | IntRange | Choice], dict[str, Any]]:
    """One attachment's (``sam``, ``schedule``) searched dimensions and fixed values,
    by setting name, from a study file's ``true``/``false`` or mapping."""
    if choice is False:
        return {}, {}
    settings = ATTACHMENTS[key]
    declared = {k: _prefix_condition(d, key) for k, d in settings.search_space().items()}
    if choice is True:
        return declared, {}
    dims: dict[str, FloatRange | IntRange | Choice] = {}
    fixed: dict[str, Any] = {}
    for name, value in choice.items():
        if name not in settings.model_fields:
            raise ValueError(f"{key}.{name}: unknown {key} setting; allowed: {', '.join(settings.model_fields)}")
        if not isinstance(value, list):
            fixed[name] = value
        elif name not in declared:
            raise ValueError(f"{key}.{name} = {value!r}: not searchable; searchable: {', '.join(declared)}")
        else:
            dims[name] = override_dimension(f"{key}.{name}", value, declared[name], settings, name)
    settings.parse(fixed, where=key)
    return dims, fixed


def _prefix_condition(dim: SearchDimension, key: str) -> SearchDimension:
    """``dim`` with its ``when`` condition naming ``<key>.<setting>``, as the flat search params do."""
    return dim if dim.when is None else replace(dim, when=(f"{key}.{dim.when[0]}", dim.when[1]))


#: samplers that hpo2 runs per optimizer (:class:`hpo2.study.samplers.PerOptimizerSampler`): they allocate
PER_OPTIMIZER_SAMPLERS = tuple(name for name, spec in SAMPLERS.items() if spec.per_optimizer)
if TYPE_CHECKING:
    SamplerName = str
else:  # the registry's names, as a Literal: pydantic lists them when a file names another
    SamplerName = Literal[tuple(SAMPLERS)]


class SamplerConfig(Strict):
    """The sampler.  For the per-optimizer samplers (gp, botorch, cmaes): ``allocation`` picks each trial's
    optimizer (:mod:`hpo2.study.allocation`; unset: ``adaptive`` for one objective, ``balanced`` for several),
    ``allocation_floor`` is the least share of an even split that adaptive allocation leaves every optimizer,
    ``n_startup_trials`` counts random trials per optimizer after its paper defaults (1 unless set), and
    ``random_fraction`` is the share of model proposals replaced by random ones (interleaved random search)."""

    name: SamplerName = "tpe"
    seed: int | None = None
    n_startup_trials: int | None = Field(default=None, ge=0)
    allocation: Literal["balanced", "adaptive"] | None = None
    allocation_floor: float = Field(default=0.25, ge=0, le=1)
    random_fraction: float = Field(default=0.0, ge=0, lt=1)


class PrunerConfig(Strict):
    name: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(default=4, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)


class ObjectiveConfig(Strict):
    metric: Literal["valid_metric", "valid_loss", "train_loss", "wall_seconds", "grad_equivalents"] = "valid_metric"
    direction: Literal["auto", "maximize", "minimize"] = "auto"


class WarmStartConfig(Strict):
    """Start from an earlier study's best configurations (:mod:`hpo2.study.warm_start`):
    ``study`` (a study name or file, as ``hpo2 study`` finds it; with ``storage``: the
    study's name in that storage) and/or ``storage`` (an Optuna storage URL holding
    one study), ``top_k`` configurations per optimizer."""

    study: str | None = None
    storage: str | None = None
    top_k: int = Field(default=2, ge=1, le=100)

    @model_validator(mode="after")
    def _source(self) -> WarmStartConfig:
        if self.study is None and self.storage is None:
            raise ValueError("give study (an earlier study's name or file) or storage (its Optuna storage URL)")
        return self


class ConfirmConfig(Strict):
    """The confirmation stage (:mod:`hpo2.study.confirm`): the overall ``top_k`` trials and the
    best of the ``top_k`` best optimizers rerun on ``seeds`` new seeds each; ``top_k: 0`` (or
    ``confirm: false``) turns it off."""

    top_k: int = Field(default=3, ge=0, le=100)
    seeds: int = Field(default=3, ge=2, le=100, description="two at least: the interval needs a spread")


class StudyConfig(Strict):
    """A study: what to search over, how, for how long, and where results go."""

    name: StudyName
    task: TaskSection
    budget: Budget = Budget(epochs=2)
    objective: list[ObjectiveConfig] = Field(default_factory=lambda: [ObjectiveConfig()])
    optimizers: list[OptimizerChoice] = Field(default_factory=lambda: [OptimizerChoice(name=n) for n in REGISTRY])
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    n_trials: int | None = Field(default=20, ge=1, le=MAX_TRIALS)
    timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS, allow_inf_nan=False)
    jobs: int = Field(default=1, ge=1, le=256)
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    seed: int = 0
    #: ``fixed``: every trial trains with ``seed``; ``per_trial``: each its own, drawn from ``seed`` and its number
    #: (README, "Study file").  ``fixed`` by default: on digits_mlp one shared seed ranked 48 Adam settings closer
    #: to their 5-seed means than a seed per trial (rank correlation 0.986 vs 0.951 among the best 12;
    #: ``benchmarks/seed_noise.py``, BENCHMARKS.md "Session 8: samplers")
    seeds: Literal["fixed", "per_trial"] = "fixed"
    device: Device = "auto"
    enqueue_defaults: bool = True
    heartbeat_interval: int = Field(default=30, ge=1, le=3600)
    max_retry: int = Field(default=2, ge=0, le=100)
    curvature_diagnostics: bool = True
    #: the most of a trial's time the checkpoint flatness measurements may take (the end-of-trial one is always taken)
    curvature_share: float = Field(default=0.1, gt=0, le=1)
    report: bool = True
    warm_start: WarmStartConfig | None = None
    confirm: ConfirmConfig = ConfirmConfig()

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm(cls, value: Any) -> Any:
        if value is False:
            return {"top_k": 0}
        return {} if value is True else value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        if isinstance(value, str | dict):
            value = [value]
        return [{"metric": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("warm_start", mode="before")
    @classmethod
    def _warm_start(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"storage": value} if "://" in value or value.startswith("journal:") else {"study": value}
        return value

    @field_validator("optimizers", mode="before")
    @classmethod
    def _optimizers(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        if not self.optimizers:
            raise ValueError("optimizers: list at least one optimizer")
        names = [o.name for o in self.optimizers]
        if len(set(names)) != len(names):
            raise ValueError(f"optimizers: {names} names an optimizer twice")
        if not self.objective:
            raise ValueError("objective: give at least one metric")
        if len(self.objective) > 1 and not SAMPLERS[self.sampler.name].multi_objective:
            several = ", ".join(name for name, spec in SAMPLERS.items() if spec.multi_objective)
            raise ValueError(f"sampler.name = {self.sampler.name!r} optimises one objective; use {several}")
        if self.n_trials is None and self.timeout is None:
            raise ValueError("set n_trials or timeout (or both)")
        self._check_allocation()
        if self.multi_objective and "confirm" in self.model_fields_set and self.confirm.top_k:
            raise ValueError("confirm: the confirmation stage picks by one objective's mean; with several "
                             "objectives set confirm: false (the Pareto front is the answer)")
        return self

    def _check_allocation(self) -> None:
        allocation, sampler = self.sampler.allocation, self.sampler.name
        if allocation is not None and sampler not in PER_OPTIMIZER_SAMPLERS:
            raise ValueError(f"sampler.allocation = {allocation!r} applies to the per-optimizer samplers "
                             f"{', '.join(PER_OPTIMIZER_SAMPLERS)}; sampler {sampler!r} picks the optimizer itself")
        if self.sampler.random_fraction and sampler not in PER_OPTIMIZER_SAMPLERS:
            raise ValueError(f"sampler.random_fraction = {self.sampler.random_fraction} applies to the per-optimizer "
                             f"samplers {', '.join(PER_OPTIMIZER_SAMPLERS)}; sampler {sampler!r} has no model "
                             "proposals to replace")
        if allocation == "adaptive" and self.multi_objective:
            raise ValueError("sampler.allocation = 'adaptive' needs one objective (it chases the best value); "
                             "use 'balanced' with several objectives")

    @property
    def allocation(self) -> Literal["balanced", "adaptive"]:
        """The allocation in force: the file's, else adaptive for one objective and balanced for several."""
        if self.sampler.allocation is not None:
            return self.sampler.allocation
        return "balanced" if self.multi_objective else "adaptive"

    @property
    def confirms(self) -> bool:
        """Whether the study ends with a confirmation stage (one objective, ``top_k`` > 0)."""
        return self.confirm.top_k > 0 and not self.multi_objective

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1


def load_study_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[StudyConfig, Path]:
    """Read and validate a study file; relative storage/tracking defaults resolve
    beside it.  Errors name the field path, the value and what is allowed."""
    path = Path(path)
    data = load_config_file(path)
    if looks_like_suite_file(data):
        raise suite_file_error(path, data)
    if "optimizer" in data and "name" not in data:
        raise SettingsError(
            f"{path} is a `hpo2 train` config (one optimizer, no study name): train with "
            f"`hpo2 train --config {path}`; a study file has name, task and optimizers (see studies/)"
        )
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    source = (
        f"{path} (with command-line {', '.join('--' + k.replace('_', '-') for k in given)})" if given else str(path)
    )
    config = validate_with_task(StudyConfig, data, source)
    # a task file named relative to the study file means the same from any folder (and on every worker)
    return config.model_copy(update={"task": config.task.anchored(path.resolve().parent)}), path.resolve()


def default_storage(config: StudyConfig, study_file: Path) -> str:
    """``sqlite:///<dir>/<name>.optuna.db`` beside the study file."""
    return config.storage or f"sqlite:///{study_file.parent / (config.name + '.optuna.db')}"


def storage_error(
    url: str, exc: BaseException, field: str = "storage",
    hint: str = "or leave storage unset for a sqlite file beside the study",
) -> SettingsError:  # fmt: skip
    """The one-paragraph error for a storage URL (the study file's ``field``) the driver
    could not open (password masked); ``hint`` ends it ("" for none)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return SettingsError(
        f"{field}: cannot open {redact_url(url)!r} ({type(exc).__name__}: {redact_text(first_line, url)}). "
        f"Check the URL, that the database server runs and the database exists{', ' + hint if hint else ''}"
    )


def default_tracking_uri(config: StudyConfig, study_file: Path) -> str:
    """``sqlite:///<dir>/mlflow.db`` beside the study file (MLflow 3's default store)."""
    return config.tracking_uri or f"sqlite:///{study_file.parent / 'mlflow.db'}"
