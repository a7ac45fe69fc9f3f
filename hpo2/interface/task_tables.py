"""What ``hpo2 tasks`` prints: the registered tasks, and every setting of one, read
from the settings models that validate them (the formatting is ``hpo2 optimizers``')."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError

from hpo2.errors import DataMissingError, SettingsError, did_you_mean
from hpo2.interface.optimizer_tables import format_allowed, format_value
from hpo2.interface.tables import Column, FittedTable
from hpo2.tasks.registry import TASKS, TaskSpec
from hpo2.tasks.source import TaskSection, resolve_task


def data_status(spec: TaskSpec) -> str:
    """``bundled or generated``, ``ready`` (its files are there) or ``missing: <how to get them>``;
    the files are checked with the default settings, without being read."""
    if spec.check_data is None:
        return "bundled or generated"
    try:
        spec.check_data(spec.settings())
    except DataMissingError as exc:
        return f"missing: {exc}"
    return "ready"


def tasks_table() -> FittedTable:
    """One row per task: name, summary, target (metric and direction), data status."""
    table = FittedTable(Column("name", "name"), Column("summary", "note"), "target", "data",
                        title="hpo2 tasks (hpo2 tasks NAME lists one's settings)")
    for name, spec in TASKS.items():
        status = data_status(spec)
        table.add_row(name, spec.summary, spec.target_label,
                      "missing (hpo2 tasks NAME says how to get it)" if status.startswith("missing") else status)
    return table


def _settings_table(title: str, caption: str, settings: type[BaseModel]) -> FittedTable:
    table = FittedTable(Column("setting", "name"), "default", "allowed", Column("description", "note"),
                        title=title, caption=caption)
    for field, info in settings.model_fields.items():
        default = "(required)" if info.is_required() else format_value(info.default)
        table.add_row(field, default, format_allowed(info.annotation, info.metadata), info.description or "")
    return table


def task_settings_table(name: str) -> FittedTable:
    """Every setting of task ``name`` (``task.settings`` in a study file), under its
    target; an unknown name raises :class:`SettingsError` with the closest known name.
    A name with a ``:`` is an entrypoint (``my_pkg.tasks:build``, ``./tasks/my_task.py:build``):
    its code is imported and the settings its function declares are listed."""
    if ":" in name:
        return _entrypoint_settings_table(name)
    if name not in TASKS:
        raise SettingsError(f"{name!r} is not a known task{did_you_mean(name, TASKS)}; allowed: {', '.join(TASKS)}")
    spec = TASKS[name]
    caption = (f"target: {spec.target_label} (time-to-target; task.settings.target changes it); "
               f"data: {data_status(spec)}")  # fmt: skip
    return _settings_table(f"{name}: {spec.summary}", caption, spec.settings)


def _entrypoint_settings_table(entrypoint: str) -> FittedTable:
    """The settings a user's task function declares (hpo2's seed, batch_size and target included)."""
    try:
        source = resolve_task(TaskSection(entrypoint=entrypoint), Path.cwd())
    except ValidationError as exc:
        raise SettingsError(f"{entrypoint!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    caption = "target: the Task's own; data: the task's own code (run when a study or `hpo2 train` builds it)"
    return _settings_table(f"{entrypoint}: {source.summary}", caption, source.settings)
