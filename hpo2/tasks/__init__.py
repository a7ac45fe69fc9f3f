"""Training tasks that run offline: model + data + loss + metrics, by name."""

from hpo2.tasks.base import Split, SplitData, Task, TaskSettings, loss_and_metric
from hpo2.tasks.registry import TASKS, TaskSpec, build_task, check_task_data, parse_task_settings

__all__ = [
    "TASKS",
    "Split",
    "SplitData",
    "Task",
    "TaskSettings",
    "TaskSpec",
    "build_task",
    "check_task_data",
    "loss_and_metric",
    "parse_task_settings",
]
