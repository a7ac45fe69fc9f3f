"""MLflow tracking through the client API: runs, params, batched metrics.

Metrics are buffered and sent with ``log_batch`` (at most 1,000 per call, MLflow's
limit) by one background writer thread per run, so the database writes overlap
training and tracking stays a small fraction of a trial's time; :meth:`end`
waits for them.  (MLflow's own ``synchronous=False`` mode was measured slower
here: its queue flushes on a timer, and waiting for it at the end of each trial
cost more than it saved.)  The default
store is a sqlite file (MLflow 3's default ``sqlite:///mlflow.db``); the file
store under ``./mlruns`` is not used.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

MAX_BATCH = 1000


def flatten_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``{"lr": 0.1}`` with prefix ``optimizer`` -> ``{"optimizer.lr": "0.1"}``."""
    return {f"{prefix}.{k}" if prefix else k: str(v) for k, v in values.items()}


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing (as a model-training
    experiment, so MLflow 3's UI opens on its runs, with artifacts at
    ``artifact_location`` when given)."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    tags = {"mlflow.experimentKind": "custom_model_development"}
    return client.create_experiment(name, artifact_location=artifact_location, tags=tags)


class TrackedRun:
    """One MLflow run with buffered metrics; :meth:`create` starts one (optionally
    nested under a parent run)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._buffer: list[Metric] = []
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    @classmethod
    def create(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        artifact_location: str | None = None,
    ) -> TrackedRun:
        client = MlflowClient(tracking_uri=tracking_uri)
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        exp = experiment_id(client, experiment, artifact_location)
        run = client.create_run(exp, tags=all_tags, run_name=run_name)
        return cls(client, run.info.run_id)

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
        """Hand the buffered metrics to the run's writer thread (one, so order is kept)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo2-mlflow")
        while self._buffer:
            batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self._pending.append(self._writer.submit(self.client.log_batch, self.run_id, metrics=batch))

    def wait(self) -> None:
        """Block until every handed-over batch is written; re-raise a write error."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def end(self, status: str = "FINISHED") -> None:
        """Flush, wait for the writes, and close the run as FINISHED, FAILED or KILLED."""
        self.flush()
        self.wait()
        if self._writer is not None:
            self._writer.shutdown()
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


def find_study_run(client: MlflowClient, experiment: str, study_name: str) -> str | None:
    """The run id of study ``study_name``'s parent run, if it has one."""
    runs = client.search_runs(
        [experiment_id(client, experiment)],
        filter_string=f"tags.`hpo2.study` = '{study_name}' and tags.`hpo2.role` = 'study'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def study_parent_run(
    tracking_uri: str, experiment: str, study_name: str, tags: Mapping[str, str], artifact_location: str | None = None
) -> TrackedRun:
    """The study's parent run: found again by its tags when the study resumes."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id(client, experiment, artifact_location)
    run_id = find_study_run(client, experiment, study_name)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return TrackedRun(client, run_id)
    return TrackedRun.create(tracking_uri, experiment, study_name, {**tags, "hpo2.study": study_name, "hpo2.role": "study"})
