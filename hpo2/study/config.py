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

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpo2.config import validate
from hpo2.optim.registry import REGISTRY, get_spec, load_config_file
from hpo2.optim.settings import Choice, FloatRange, IntRange, SettingsError
from hpo2.tasks import parse_task_settings
from hpo2.train import Budget, ConfigSection


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerChoice(Strict):
    """One optimizer to search over, with optional range overrides and fixed settings."""

    name: str
    ranges: dict[str, list[Any]] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> OptimizerChoice:
        spec = get_spec(self.name, "optimizers[].name")
        space = spec.search_space()
        for key, value in self.ranges.items():
            if key not in space:
                raise ValueError(f"ranges.{key}: {key!r} is not a searched setting of {self.name}; allowed: {', '.join(space)}")
            dim = space[key]
            if isinstance(dim, Choice):
                if not value or any(v not in dim.choices for v in value):
                    raise ValueError(f"ranges.{key} = {value!r}: choices must be a non-empty subset of {list(dim.choices)}")
            elif len(value) != 2 or not all(isinstance(v, int | float) for v in value) or not value[0] < value[1]:
                raise ValueError(f"ranges.{key} = {value!r}: give [low, high] with low < high")
            elif isinstance(dim, FloatRange) and dim.log and value[0] <= 0:
                raise ValueError(f"ranges.{key} = {value!r}: {key} is searched on a log scale, so low must be > 0")
        spec.settings.parse(self.fixed, where="fixed")
        return self

    def space(self) -> dict[str, FloatRange | IntRange | Choice]:
        """The declared space with this study's overrides applied and fixed settings removed."""
        space = dict(get_spec(self.name).search_space())
        for key, value in self.ranges.items():
            dim = space[key]
            if isinstance(dim, Choice):
                space[key] = Choice(tuple(value), dim.when)
            elif isinstance(dim, IntRange):
                space[key] = IntRange(int(value[0]), int(value[1]), dim.log, dim.when)
            else:
                space[key] = FloatRange(float(value[0]), float(value[1]), dim.log, dim.when)
        return {k: v for k, v in space.items() if k not in self.fixed}


class SamplerConfig(Strict):
    name: Literal["tpe", "gp", "botorch", "cmaes", "random", "qmc"] = "tpe"
    seed: int | None = None
    n_startup_trials: int | None = Field(default=None, ge=0)


class PrunerConfig(Strict):
    name: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(default=4, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)


class ObjectiveConfig(Strict):
    metric: Literal["valid_metric", "valid_loss", "train_loss", "wall_seconds", "grad_equivalents"] = "valid_metric"
    direction: Literal["auto", "maximize", "minimize"] = "auto"


class StudyConfig(Strict):
    """A study: what to search over, how, for how long, and where results go."""

    name: str
    task: ConfigSection
    budget: Budget = Budget(epochs=2)
    objective: list[ObjectiveConfig] = Field(default_factory=lambda: [ObjectiveConfig()])
    optimizers: list[OptimizerChoice] = Field(default_factory=lambda: [OptimizerChoice(name=n) for n in REGISTRY])
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    n_trials: int | None = Field(default=20, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    jobs: int = Field(default=1, ge=1)
    storage: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    seed: int = 0
    device: str = "auto"
    enqueue_defaults: bool = True
    heartbeat_interval: int = Field(default=30, ge=1)
    max_retry: int = Field(default=2, ge=0)
    curvature_diagnostics: bool = True
    report: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("use letters, digits, '_', '.', '-' (it names files and MLflow runs)")
        return value

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("objective", mode="before")
    @classmethod
    def _objective(cls, value: Any) -> Any:
        if isinstance(value, str | dict):
            value = [value]
        return [{"metric": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

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
        if len(self.objective) > 1 and self.sampler.name == "cmaes":
            raise ValueError("sampler.name = 'cmaes' optimises one objective; use tpe, gp, botorch, random or qmc")
        if self.n_trials is None and self.timeout is None:
            raise ValueError("set n_trials or timeout (or both)")
        if not self.budget.finite and self.timeout is None:
            raise ValueError(self.budget.endless_message("a trial") + ", or a study timeout")
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1


def load_study_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[StudyConfig, Path]:
    """Read and validate a study file; relative storage/tracking defaults resolve
    beside it.  Errors name the field path, the value and what is allowed."""
    path = Path(path)
    data = load_config_file(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = validate(StudyConfig, data, str(path))
    parse_task_settings(config.task.name, config.task.settings)
    return config, path.resolve()


def default_storage(config: StudyConfig, study_file: Path) -> str:
    """``sqlite:///<dir>/<name>.optuna.db`` beside the study file."""
    return config.storage or f"sqlite:///{study_file.parent / (config.name + '.optuna.db')}"


def default_tracking_uri(config: StudyConfig, study_file: Path) -> str:
    """``sqlite:///<dir>/mlflow.db`` beside the study file (MLflow 3's default store)."""
    return config.tracking_uri or f"sqlite:///{study_file.parent / 'mlflow.db'}"


def find_study_file(name_or_file: str, search: tuple[Path, ...] = (Path("studies"), Path("."))) -> Path:
    """A study file path, or the file in ``studies/`` or ``.`` whose ``name`` is ``name_or_file``."""
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml", ".json") or candidate.is_file():
        if not candidate.is_file():
            raise SettingsError(f"study file {name_or_file!r} does not exist")
        return candidate
    for folder in search:
        for file in sorted(folder.glob("*.y*ml")) if folder.is_dir() else []:
            try:
                if load_config_file(file).get("name") == name_or_file:
                    return file
            except SettingsError:
                continue
    raise SettingsError(
        f"no study named {name_or_file!r} in {', '.join(str(s) + '/' for s in search)}; pass the study file instead"
    )
