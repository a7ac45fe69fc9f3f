"""What ``hpo2 tasks`` prints: the registered tasks, and every setting of one, read
from the settings models that validate them (the formatting is ``hpo2 optimizers``')."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError
from rich.table import Table

from hpo2.errors import DataMissingError, SettingsError, did_you_mean
from hpo2.optimizer_tables import format_allowed, format_value
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


def tasks_table() -> Table:
    """One row per task: name, summary, metric direction, data status."""
    table = Table(title="hpo2 tasks (hpo2 tasks NAME lists one's settings)")
    for column in ("name", "summary", "metric", "data"):
        table.add_column(column, overflow="fold")
    for name, spec in TASKS.items():
        status = data_status(spec)
        table.add_row(name, spec.summary, "higher is better" if spec.higher_is_better else "lower is better",
                      "missing (hpo2 tasks NAME says how to get it)" if status.startswith("missing") else status)
    return table


def task_settings_table(name: str) -> Table:
    """Every setting of task ``name`` (``task.settings`` in a study file); an unknown
    name raises :class:`SettingsError` with the closest known name.  A name with a
    ``:`` is an entrypoint (``my_pkg.tasks:build``, ``./tasks/my_task.py:build``):
    its code is imported and the settings its function declares are listed."""
    if ":" in name:
        return _entrypoint_settings_table(name)
    if name not in TASKS:
        raise SettingsError(f"{name!r} is not a known task{did_you_mean(name, TASKS)}; allowed: {', '.join(TASKS)}")
    spec = TASKS[name]
    table = Table(title=f"{name}: {spec.summary}", caption=f"data: {data_status(spec)}")
    for column in ("setting", "default", "allowed", "description"):
        table.add_column(column, overflow="fold")
    _add_settings(table, spec.settings)
    return table


def _add_settings(table: Table, settings: type[BaseModel]) -> None:
    for field, info in settings.model_fields.items():
        default = "(required)" if info.is_required() else format_value(info.default)
        table.add_row(field, default, format_allowed(info.annotation, info.metadata), info.description or "")


def _entrypoint_settings_table(entrypoint: str) -> Table:
    """The settings a user's task function declares (hpo2's seed, batch_size and target included)."""
    try:
        source = resolve_task(TaskSection(entrypoint=entrypoint), Path.cwd())
    except ValidationError as exc:
        raise SettingsError(f"{entrypoint!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    table = Table(title=f"{entrypoint}: {source.summary}", caption="data: the task's own code (run when a study or "
                  "`hpo2 train` builds it)")
    for column in ("setting", "default", "allowed", "description"):
        table.add_column(column, overflow="fold")
    _add_settings(table, source.settings)
    return table
