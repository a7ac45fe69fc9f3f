"""The nested MLflow run of one trial: params, per-evaluation and per-step metrics,
flatness measurements, and its end with the reason; it times itself, so the study
can show what share of a trial's time tracking took."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hpo2.study.tracking import TrackedRun, flatten_params, prefixed
from hpo2.train.loop import Evaluation, TrainResult


class TrialTracker:
    """The nested MLflow run of trial ``number`` under the study's parent run, named
    ``<kind>-<number>-<optimizer>`` (kind ``confirm`` for a confirmation run) and tagged with ``tags`` too.

    ``on_created`` is told the run id once its creation reached the server (at
    once, or later when a lost server comes back)."""

    def __init__(
        self, tracking_uri: str, experiment: str, study_name: str, parent_run_id: str | None, number: int,
        optimizer: str, settings: dict[str, Any], on_created: Callable[[str], None] | None = None,
        tags: dict[str, str] | None = None, kind: str = "trial",
    ) -> None:  # fmt: skip
        self.started = time.perf_counter()
        self.seconds = 0.0  # spent in tracking calls
        self.ended = False
        with self._timed():
            self.run = TrackedRun.create(
                tracking_uri, experiment, f"{kind}-{number}-{optimizer}",
                {"hpo2.study": study_name, "hpo2.trial_number": str(number), "hpo2.optimizer": optimizer,
                 **(tags or {})},
                parent_run_id=parent_run_id, on_created=on_created,
            )  # fmt: skip
            self.run.log_params({"optimizer": optimizer, **flatten_params("", settings)})

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def epoch(self, evaluation: Evaluation) -> None:
        with self._timed():
            self.run.log_metrics(evaluation.metrics(), step=evaluation.step)
            self.run.flush()  # written in the background while the next epoch trains

    def step(self, step: int, diagnostics: dict[str, Any]) -> None:
        with self._timed():
            self.run.log_metrics(prefixed("diag", diagnostics), step=step)

    def curvature(self, summary: dict[str, float], step: int) -> None:
        with self._timed():
            self.run.log_metrics(prefixed("curvature", summary), step=step)

    @property
    def total_seconds(self) -> float:
        """Seconds since the tracker started (the trial's time so far)."""
        return time.perf_counter() - self.started

    def end(
        self, status: str, reason: str | None = None, status_tag: str = "", result: TrainResult | None = None,
        after: Callable[[bool], None] | None = None,
    ) -> None:  # fmt: skip
        """Close the run once: FINISHED, FAILED or KILLED (pruned or diverged), with the
        reason.  ``after`` is told whether the tracking server received all of it
        (False: the caller keeps :attr:`run` to retry or spool); its time counts as tracking."""
        if self.ended:
            return
        self.ended = True
        with self._timed():
            self.run.set_tags({"hpo2.status": status_tag or status.lower(), "hpo2.reason": reason or ""})
            if result is not None and result.time_to_target_seconds is not None:
                self.run.log_metrics({"time_to_target_seconds": result.time_to_target_seconds,
                                      "time_to_target_grad_equivalents": result.time_to_target_grad_equivalents},
                                     step=0)  # fmt: skip
            self.run.log_metrics({"tracking_seconds": self.seconds,
                                  "tracking_fraction": self.seconds / max(self.total_seconds, 1e-9)}, step=0)
            sent = self.run.end(status)
            if after is not None:
                after(sent)
