"""Training tasks that run offline: model + data + loss + metrics, by name."""

from hpo2.tasks.base import Split, Task, TaskSettings, loss_and_metric
from hpo2.tasks.registry import TASKS, TaskSpec, build_task, parse_task_settings

__all__ = ["TASKS", "Split", "Task", "TaskSettings", "TaskSpec", "build_task", "loss_and_metric", "parse_task_settings"]
