"""Training tasks that run offline: model + data + loss + metrics, by name."""

from hpo2.tasks import autoencoder, image_classification, small, synthetic  # noqa: F401  (registers the tasks)
from hpo2.tasks.base import TASKS, Split, Task, TaskSettings, build_task, loss_and_metric, parse_task_settings

__all__ = ["TASKS", "Split", "Task", "TaskSettings", "build_task", "loss_and_metric", "parse_task_settings"]
