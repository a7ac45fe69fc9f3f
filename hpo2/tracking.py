"""MLflow tracking through the client API: runs, params, batched metrics.

Metrics are buffered and sent with ``log_batch`` (at most 1,000 per call, MLflow's
limit) so that tracking stays a small fraction of a trial's time.  The default
store is a sqlite file (MLflow 3's default ``sqlite:///mlflow.db``); the file
store under ``./mlruns`` is not used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

MAX_BATCH = 1000


def flatten_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``{"lr": 0.1}`` with prefix ``optimizer`` -> ``{"optimizer.lr": "0.1"}``."""
    return {f"{prefix}.{k}" if prefix else k: str(v) for k, v in values.items()}


class TrackedRun:
    """One MLflow run (optionally nested under a parent run) with buffered metrics."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        all_tags = dict(tags or {})
        all_tags["mlflow.runName"] = run_name
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=run_name).info.run_id
        self._buffer: list[Metric] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Buffer the finite numeric entries of ``metrics`` at ``step``."""
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._buffer.append(Metric(key, float(value), now, step))
        if len(self._buffer) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def end(self, status: str = "FINISHED") -> None:
        """Flush and close the run as FINISHED, FAILED or KILLED."""
        self.flush()
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
