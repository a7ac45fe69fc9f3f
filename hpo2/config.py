"""Reading user config files into validated models, with errors that name the
field, the value and what is allowed -- never a traceback for a user mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hpo2.optim.registry import load_config_file, parse_optimizer_config
from hpo2.optim.settings import SettingsError
from hpo2.tasks import parse_task_settings
from hpo2.train import TrainConfig

Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: dict[str, Any], source: str) -> Model:
    """``model(**data)``, turning pydantic's errors into one :class:`SettingsError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {value!r}"
            problems.append(f"{where}{shown}: {err['msg'].removeprefix('Value error, ')}")
        raise SettingsError(f"{source}: " + "; ".join(problems)) from None


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and fully validate a ``hpo2 train`` config (task and optimizer settings included)."""
    data = load_config_file(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = validate(TrainConfig, data, str(path))
    parse_optimizer_config(config.optimizer.model_dump())
    parse_task_settings(config.task.name, config.task.settings)
    return config
