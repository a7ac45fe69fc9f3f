"""A study's objectives: the direction of each, and its value for a finished training run."""

from __future__ import annotations

import math
from typing import Literal

from hpo2.study.config import StudyConfig
from hpo2.train.loop import TrainResult

Direction = Literal["minimize", "maximize"]

#: the direction of every objective whose direction does not depend on the task
DIRECTIONS: dict[str, Direction] = {"valid_loss": "minimize", "train_loss": "minimize", "wall_seconds": "minimize",
              "grad_equivalents": "minimize"}  # fmt: skip


def objective_directions(config: StudyConfig, higher_is_better: bool) -> list[Direction]:
    """``minimize`` / ``maximize`` for each objective of ``config``: as written, or
    (``auto``) from the metric; ``valid_metric`` follows the task's ``higher_is_better``."""
    out: list[Direction] = []
    for objective in config.objective:
        if objective.direction == "maximize" or objective.direction == "minimize":
            out.append(objective.direction)
        elif objective.metric == "valid_metric":
            out.append("maximize" if higher_is_better else "minimize")
        else:
            out.append(DIRECTIONS[objective.metric])
    return out


def objective_value(metric: str, result: TrainResult) -> float:
    """The value of objective ``metric`` for ``result`` (NaN when the run has no evaluation)."""
    final = result.final
    if metric == "wall_seconds":
        return result.wall_seconds
    if metric == "grad_equivalents":
        return result.grad_equivalents
    if final is None:
        return math.nan
    return {"valid_metric": final.valid_metric, "valid_loss": final.valid_loss, "train_loss": final.train_loss}[metric]
