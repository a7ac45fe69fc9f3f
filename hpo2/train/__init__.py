"""The training workload: one loop that trials and ``hpo2 train`` both run.

* :mod:`hpo2.train.loop` -- :func:`run_training`, budgets, evaluation, time-to-target;
* :mod:`hpo2.train.config` -- reading and validating a ``hpo2 train`` file;
* :mod:`hpo2.train.diagnostics` -- flatness measurements logged by every trial.

The loop's public names are re-exported here, so ``from hpo2.train import run_training``
reads as it did when the loop was one module.
"""

from hpo2.train.loop import (
    MAX_SECONDS,
    Budget,
    Device,
    Evaluation,
    TrainConfig,
    TrainResult,
    evaluate,
    resolve_batch_size,
    resolve_device,
    run_training,
    train_from_config,
)

__all__ = [
    "MAX_SECONDS",
    "Budget",
    "Device",
    "Evaluation",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "resolve_batch_size",
    "resolve_device",
    "run_training",
    "train_from_config",
]
