"""Reading user config files into validated models, with errors that name the
field, the value and what is allowed -- never a traceback for a user mistake."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hpo2.errors import SettingsError, brief, did_you_mean
from hpo2.optim.registry import load_config_file, parse_optimizer_config
from hpo2.tasks.source import builtin_task_problem
from hpo2.train.loop import TrainConfig

Model = TypeVar("Model", bound=BaseModel)
#: the most validation problems one message lists (a file can hold thousands of bad items)
MAX_PROBLEMS = 10


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` inside ``model``
    (list indexes and ``X | None`` unwrapped), or None if it is not one."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = current.model_fields[part].annotation
        while typing.get_origin(current) in (list, typing.Union, types.UnionType):
            current = next((a for a in typing.get_args(current) if a is not type(None)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def validate(model: type[Model], data: dict[str, Any], source: str) -> Model:
    """``model(**data)``, turning pydantic's errors into one :class:`SettingsError`;
    an unknown key gets the closest allowed name (``did you mean 'epochs'?``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        for err in errors[:MAX_PROBLEMS]:
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" = {brief(value)}"
            message = err["msg"].removeprefix("Value error, ")
            owner = _model_at(model, err["loc"][:-1]) if err["type"] == "extra_forbidden" else None
            if owner is not None:
                allowed = list(owner.model_fields)
                message = f"unknown key{did_you_mean(err['loc'][-1], allowed)}; allowed: {', '.join(allowed)}"
            problems.append(f"{where}{shown}: {message}")
        if len(errors) > MAX_PROBLEMS:
            problems.append(f"and {len(errors) - MAX_PROBLEMS:,} more")
        raise SettingsError(f"{source}: " + "; ".join(problems)) from None


def validate_with_task(model: type[Model], data: dict[str, Any], source: str) -> Model:
    """:func:`validate`, with a built-in task's settings checked in the same round: every
    mistake of the file (schema and task settings) in one message naming ``source``."""
    task_problem = builtin_task_problem(data.get("task"))
    try:
        config = validate(model, data, source)
    except SettingsError as exc:
        raise SettingsError(f"{exc}; {task_problem}" if task_problem else str(exc)) from None
    if task_problem:
        raise SettingsError(f"{source}: {task_problem}")
    return config


def looks_like_study_file(data: dict[str, Any]) -> bool:
    """A study file has a search (``optimizers``, ``n_trials``...) but no single ``optimizer``."""
    return "optimizer" not in data and bool({"n_trials", "optimizers", "sampler", "pruner", "objective"} & set(data))


def looks_like_suite_file(data: dict[str, Any]) -> bool:
    """A suite file has a list of ``tasks`` and no single ``task``."""
    return "tasks" in data and "task" not in data


def suite_file_error(path: str | Path, data: dict[str, Any]) -> SettingsError:
    """One line for a suite file given where a study or train file is expected: what
    the file is, the commands that take it, and how its studies are named."""
    name = data.get("name")
    tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []
    first = tasks[0] if tasks and isinstance(tasks[0], dict) else {}
    task = first.get("task")
    label = first.get("label") or (task.get("name") if isinstance(task, dict) else task)
    example = f", e.g. `hpo2 study best {name}.{label}`" if isinstance(name, str) and isinstance(label, str) else ""
    return SettingsError(
        f"{path} is a suite file (it has tasks): run it with `hpo2 suite run {path}` and report on it with "
        f"`hpo2 suite report {path}`; the `hpo2 study` commands take one of its studies, named "
        f"<suite>.<task label>{example}"
    )


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and fully validate a ``hpo2 train`` config (task and optimizer settings included)."""
    data = load_config_file(path)
    if looks_like_suite_file(data):
        raise suite_file_error(path, data)
    if looks_like_study_file(data):
        raise SettingsError(
            f"{path} is a study file "
            f"(it has {', '.join(k for k in ('n_trials', 'optimizers') if k in data) or 'a search'} "
            f"and no optimizer): run it with `hpo2 study run {path}`; `hpo2 train --config` takes one optimizer, "
            "as `hpo2 study best NAME --export best.yaml` writes"
        )
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = validate_with_task(TrainConfig, data, str(path))
    try:
        parse_optimizer_config(config.optimizer.model_dump())
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    # a task file named relative to this config means the same from any folder
    return config.model_copy(update={"task": config.task.anchored(Path(path).resolve().parent)})
