"""MLflow tracking through the client API: runs, params, batched metrics.

Every write of a run (its creation, params, metric batches of at most 1,000 --
MLflow's limit --, tags, its end) is an operation in one ordered queue, sent by
one background writer thread per run, so the database writes overlap training
and tracking stays a small fraction of a trial's time.  (MLflow's own
``synchronous=False`` mode was measured slower here: its queue flushes on a
timer, and waiting for it at the end of each trial cost more than it saved.)

When the tracking server stops answering, nothing is lost and training goes
on: the queue keeps the unsent operations, the user is told once, every later
flush retries them, and :meth:`TrackedRun.spool` writes what is still unsent to
a JSON file at the end (``hpo2 study sync`` sends it later).  A server that is unreachable *before* a study starts is
a clear error instead (:func:`check_reachable`).  An operation the store *refuses*
(:func:`refused`: a param whose value changed -- MLflow keeps params fixed --, a
deleted run) is no outage: sending it again would be refused again, so it is
dropped and recorded in :attr:`TrackedRun.refused`, and the rest goes on.  A
resumed study whose settings changed is refused before it starts
(:func:`check_params_unchanged`).

The default store is a sqlite file (MLflow 3's default ``sqlite:///mlflow.db``);
the file store under ``./mlruns`` is not used.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hpo2.common.databases import check_database_reachable, check_sqlite_writable, local_file
from hpo2.common.redact import redact_text, redact_url
from hpo2.errors import SettingsError

if TYPE_CHECKING:  # types only: `hpo2 study sync` and the report need no torch
    from hpo2.train.loop import Evaluation, TrainConfig, TrainResult

MAX_BATCH = 1000
#: MLflow's limit on a param's value (longer values are cut, as MLflow would refuse them)
MAX_PARAM_LENGTH = 6000
#: the error codes of a tracking store that refuses an operation for good (a changed param, a deleted or
#: missing run): an outage -- no answer, a 5xx, a locked database -- has other codes and is retried
REFUSAL_CODES = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"})
#: the database servers MLflow keeps a tracking store in (``postgresql+psycopg://...``; sqlite is a file)
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")

#: MLflow's HTTP settings while hpo2 talks to a tracking server: a lost server must not
#: stall a trial for minutes in MLflow's default retries (7, with exponential backoff)
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip


class _EnvironmentScope:
    """Sets :data:`QUICK_HTTP` while at least one :func:`quick_failing_http` block runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0  # blocks inside, in any thread
        self.added: list[str] = []  # the variables the first block set (the user set none of them)

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                self.added = [name for name in QUICK_HTTP if name not in os.environ]
                os.environ.update({name: QUICK_HTTP[name] for name in self.added})
            self.depth += 1

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                for name in self.added:
                    os.environ.pop(name, None)
                self.added = []


_HTTP_SCOPE = _EnvironmentScope()


@contextmanager
def quick_failing_http() -> Iterator[None]:
    """Inside the block, MLflow's HTTP requests give up quickly (:data:`QUICK_HTTP`);
    a value the user set in the environment wins.

    MLflow reads these settings from ``os.environ`` at each request and its client
    takes no other way to set them, so they are set for the process while at least
    one block runs (blocks nest and may run in several threads: the last one out
    removes what the first one in added), never at import."""
    _HTTP_SCOPE.enter()
    try:
        yield
    finally:
        _HTTP_SCOPE.leave()


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`SettingsError`, before anything is written, if the tracking
    store cannot take a study: an HTTP server that does not answer or refuses the
    login (``http://user:password@host``, sent as basic auth), a database server
    (``postgresql://``, ...) that takes no connection, a sqlite file that cannot be
    written, or MLflow 3's refused file store (``file://``, a path)."""
    if "://" not in tracking_uri or tracking_uri.startswith("file:"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise SettingsError(
                f"tracking_uri = {redact_url(tracking_uri)!r}: MLflow 3 refuses the file store; use a sqlite "
                "database (tracking_uri: sqlite:///mlflow.db, the default beside the study file) or a tracking "
                "server (http://127.0.0.1:5000)"
            )
        return
    check_sqlite_writable(tracking_uri, "tracking_uri")
    if tracking_uri.split(":", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
        check_database_reachable(tracking_uri, "tracking_uri", "check the URI and that the database server runs and "
                                 "the database exists, or leave tracking_uri unset for the local sqlite store")
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(health_request(tracking_uri), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise SettingsError(
                f"tracking_uri: the MLflow tracking server at {redact_url(tracking_uri)} refused the login (HTTP "
                f"{exc.code}): check the user name and password (http://USER:PASSWORD@host in the URI); nothing was run"
            ) from None
        raise _no_answer(tracking_uri, exc) from None
    except OSError as exc:
        raise _no_answer(tracking_uri, exc) from None


def _no_answer(tracking_uri: str, exc: OSError) -> SettingsError:
    return SettingsError(
        f"tracking_uri: the MLflow tracking server at {redact_url(tracking_uri)} does not answer "
        f"({redact_text(str(exc), tracking_uri)}). Start it "
        "(mlflow server --backend-store-uri postgresql://... --host 127.0.0.1), fix the URI, or leave "
        "tracking_uri unset for the local sqlite store; nothing was run"
    )


def health_request(tracking_uri: str) -> urllib.request.Request:
    """GET ``<server>/health``; a ``user:password@`` in the URI becomes a basic-auth header,
    as MLflow's client (``requests``) sends it (urllib alone would look ``user:password@host`` up in DNS)."""
    parts = urllib.parse.urlsplit(tracking_uri)
    userinfo, at, host = parts.netloc.rpartition("@")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)).rstrip("/") + "/health")
    if at:
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
    return request


def refused(exc: BaseException) -> TypeGuard[MlflowException]:
    """Whether the tracking store refused an operation for good (:data:`REFUSAL_CODES`), as opposed to an outage."""
    return isinstance(exc, MlflowException) and exc.error_code in REFUSAL_CODES


def param_value(value: Any) -> str:
    """A param's value as MLflow stores it."""
    return str(value)[:MAX_PARAM_LENGTH]


def flatten_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``{"lr": 0.1}`` with prefix ``optimizer`` -> ``{"optimizer.lr": "0.1"}``."""
    return {f"{prefix}.{k}" if prefix else k: str(v) for k, v in values.items()}


def prefixed(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
    """``{"damping": 0.5}`` with prefix ``diag`` -> ``{"diag.damping": 0.5}``: the
    metric names of an optimizer's step diagnostics (``diag.*``) and of the flatness
    measurements (``curvature.*``)."""
    return {f"{prefix}.{k}": v for k, v in values.items()}


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
    """One MLflow run whose writes go through an ordered, retrying queue.

    :meth:`create` only queues the run's creation, so a trial can start while the
    server is down; ``run_id`` is known once the creation went through.
    """

    def __init__(
        self, client: MlflowClient, run_id: str | None = None, name: str = "run",
        on_created: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.client = client
        self.run_id = run_id
        self.name = name
        self.on_created = on_created  # told the run id once the creation went through, however late
        self._buffer: list[Metric] = []
        self._ops: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hpo2-mlflow")
        self._pending: list[Future[None]] = []
        self.offline_error: str | None = None
        self.refused: list[str] = []  # what the store refused for good, dropped (``kind: reason`` each)
        self._told = False
        self._ended = False

    @classmethod
    def create(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        artifact_location: str | None = None,
        experiment_id_: str | None = None,
        on_created: Callable[[str], None] | None = None,
    ) -> TrackedRun:
        """Start a run (nested under ``parent_run_id`` if given); the creation is queued
        and ``on_created`` gets the run id when it goes through."""
        client = MlflowClient(tracking_uri=tracking_uri)
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = cls(client, name=run_name, on_created=on_created)
        run._ops.append(("create", (experiment_id_, experiment, artifact_location, all_tags, run_name)))
        run._submit()
        run.wait()
        return run

    # -- the queue
    def _execute(self, kind: str, payload: Any) -> None:
        if kind == "create":
            exp_id, experiment, artifact_location, tags, run_name = payload
            exp_id = exp_id or experiment_id(self.client, experiment, artifact_location)
            self.run_id = self.client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id
            return
        run_id = self.run_id
        assert run_id is not None, "the queue starts with the run's creation"
        if kind == "params":
            self.client.log_batch(run_id, params=payload)
        elif kind == "metrics":
            self.client.log_batch(run_id, metrics=payload)
        elif kind == "tags":
            self.client.log_batch(run_id, tags=payload)
        elif kind == "end":
            self.client.set_terminated(run_id, status=payload)

    def _drain(self) -> None:
        with self._lock, quick_failing_http():
            while self._ops:
                kind, payload = self._ops[0]
                try:
                    self._execute(kind, payload)
                except Exception as exc:
                    if refused(exc):  # for good: sending it again would be refused again
                        self._drop_refused(kind, payload, exc)
                        continue
                    # server or network down: keep the op, retry later
                    self.offline_error = f"{type(exc).__name__}: {exc}"[:500]
                    if not self._told:
                        self._told = True
                        warnings.warn(
                            f"MLflow tracking is unreachable ({self.offline_error}); hpo2 keeps the metrics of "
                            f"{self.name} and retries them, training goes on",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                    return
                self._ops.pop(0)
                if kind == "create" and self.on_created is not None:
                    self._tell_created()
            self.offline_error = None

    def _drop_refused(self, kind: str, payload: Any, exc: MlflowException) -> None:
        """Drop the first queued operation, which the store refused for good.  A batch of
        params is split first, so only the refused ones are dropped; a refused creation
        drops the whole queue (there is no run to send the rest to)."""
        if kind == "params" and len(payload) > 1:
            self._ops[0:1] = [("params", [param]) for param in payload]
            return
        reason = (exc.message.strip().splitlines() or [""])[0][:300]
        dropped = len(self._ops) if kind == "create" else 1
        del self._ops[:dropped]
        self.refused.append(f"{kind}: {reason}")
        warnings.warn(f"MLflow refused the {kind} of {self.name} ({reason}); hpo2 dropped "
                      f"{'the run' if kind == 'create' else 'it'} (sending it again would be refused again)",
                      RuntimeWarning, stacklevel=2)

    def _tell_created(self) -> None:
        assert self.on_created is not None and self.run_id is not None, "called after a creation went through"
        try:
            self.on_created(self.run_id)
        except Exception as exc:  # the run exists; only the link back to it is missing
            warnings.warn(f"MLflow run {self.run_id} of {self.name} was created but could not be recorded: {exc}",
                          RuntimeWarning, stacklevel=2)

    def _submit(self) -> None:
        self._pending.append(self._writer.submit(self._drain))

    def wait(self) -> None:
        """Block until the writer has tried every queued operation."""
        for future in self._pending:
            future.result()
        self._pending.clear()

    @property
    def sent(self) -> bool:
        """Whether every operation so far reached the server."""
        return not self._ops and not self._buffer

    # -- what callers log
    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._ops.append(("params", items[start : start + 100]))
        self._submit()

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
        """Queue the buffered metrics and let the writer (re)try everything queued."""
        while self._buffer:
            batch, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            self._ops.append(("metrics", batch))
        self._submit()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._ops.append(("tags", [RunTag(k, str(v)) for k, v in tags.items()]))
        self._submit()

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """Upload a file now (artifacts are not queued: the file may be temporary)."""
        self.wait()
        if self.run_id is not None:
            with quick_failing_http():
                self.client.log_artifact(self.run_id, path, artifact_path)

    def end(self, status: str = "FINISHED") -> bool:
        """Queue the run's end (FINISHED, FAILED or KILLED) and wait; True if all was sent."""
        self._ops.append(("end", RunStatus.to_string(RunStatus.from_string(status))))
        self._ended = True
        return self.retry()

    def retry(self) -> bool:
        """Try the unsent operations again; True once everything is sent."""
        self.flush()
        self.wait()
        if self.sent and self._ended:
            self._writer.shutdown(wait=False)  # nothing more will be queued
        return self.sent

    def spool(self, folder: Path, study: str) -> Path:
        """Write the still-unsent operations to a new file in ``folder`` (nothing is lost).

        The file is named by the study, the run and a random suffix, so studies and
        runs sharing a folder never overwrite each other; :meth:`from_spool` reads it back."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{study}.{self.name}.{uuid.uuid4().hex[:12]}.json"
        self.write_spool(path, study)
        return path

    def write_spool(self, path: Path, study: str) -> None:
        """Write the still-unsent operations to ``path`` (replaced whole, never half-written)."""
        records = [{"op": kind, "payload": _encode(kind, payload)} for kind, payload in self._ops]
        partial = path.with_suffix(".partial")
        partial.write_text(
            json.dumps({"study": study, "name": self.name, "run_id": self.run_id, "operations": records}, indent=1)
        )
        partial.replace(path)

    @property
    def spooled_tags(self) -> dict[str, str]:
        """The tags its queued creation will give the run (empty once it exists)."""
        return next((dict(payload[3]) for kind, payload in self._ops if kind == "create"), {})

    @classmethod
    def from_spool(
        cls, client: MlflowClient, data: Mapping[str, Any], on_created: Callable[[str], None] | None = None
    ) -> TrackedRun:
        """The run a spool file describes, its unsent operations queued again (send them with :meth:`retry`)."""
        run = cls(client, data.get("run_id"), name=data.get("name", "run"), on_created=on_created)
        run._ops = [(record["op"], _decode(record["op"], record["payload"])) for record in data["operations"]]
        run._ended = any(kind == "end" for kind, _ in run._ops)
        return run


def _encode(kind: str, payload: Any) -> Any:
    if kind == "metrics":
        return [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in payload]
    if kind in ("params", "tags"):
        return [{"key": e.key, "value": e.value} for e in payload]
    return payload  # create: a tuple of strings and a dict; end: a status string


def _decode(kind: str, payload: Any) -> Any:
    if kind == "metrics":
        return [Metric(e["key"], e["value"], e["timestamp"], e["step"]) for e in payload]
    if kind == "params":
        return [Param(e["key"], e["value"]) for e in payload]
    if kind == "tags":
        return [RunTag(e["key"], e["value"]) for e in payload]
    if kind == "create":
        return tuple(payload)
    return payload


def find_study_run(client: MlflowClient, experiment: str, study_name: str, role: str = "study") -> str | None:
    """The run id of study ``study_name``'s parent run (of suite ``study_name``'s run
    for ``role="suite"``), if it has one."""
    runs = client.search_runs(
        [experiment_id(client, experiment)],
        filter_string=f"tags.`hpo2.study` = '{study_name}' and tags.`hpo2.role` = '{role}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def logged_params(tracking_uri: str, experiment: str, study_name: str) -> dict[str, str]:
    """The params of study ``study_name``'s parent run; empty when it has none yet.  Reads
    only: no store, experiment or run is created."""
    local = local_file(tracking_uri)
    if local is not None and not local.is_file():
        return {}
    client = MlflowClient(tracking_uri=tracking_uri)
    with quick_failing_http():
        if client.get_experiment_by_name(experiment) is None:
            return {}
        run_id = find_study_run(client, experiment, study_name)
        return {} if run_id is None else dict(client.get_run(run_id).data.params)


def check_params_unchanged(tracking_uri: str, experiment: str, study_name: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`SettingsError` if the parent run of study ``study_name`` holds other
    values for ``params`` than the study file now gives: MLflow keeps a run's params fixed,
    so a resume of an edited study cannot be logged to its run (and its trials so far were
    drawn for the old settings).  Call it before anything is written."""
    logged = logged_params(tracking_uri, experiment, study_name)
    changed = [f"{key} {logged[key]!r} -> {param_value(value)!r}" for key, value in params.items()
               if key in logged and logged[key] != param_value(value)]  # fmt: skip
    if changed:
        raise SettingsError(
            f"study {study_name!r} was run with other settings than its file now gives ({', '.join(changed)}): "
            "revert them to resume it, or give the study a new name to start a new one with them "
            f"(or `hpo2 study delete {study_name}` first); nothing was run"
        )


def study_parent_run(
    tracking_uri: str, experiment: str, study_name: str, tags: Mapping[str, str], artifact_location: str | None = None,
    role: str = "study",
) -> TrackedRun:
    """The study's parent run (a suite's run for ``role="suite"``): found again by its tags when it resumes."""
    client = MlflowClient(tracking_uri=tracking_uri)
    with quick_failing_http():
        experiment_id(client, experiment, artifact_location)
        run_id = find_study_run(client, experiment, study_name, role)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return TrackedRun(client, run_id, name=study_name)
    tags = {**tags, "hpo2.study": study_name, "hpo2.role": role}
    return TrackedRun.create(tracking_uri, experiment, study_name, tags)


class TrainingRun:
    """The MLflow run of one ``hpo2 train``: the config's params, each evaluation's
    metrics and each step's diagnostics (``diag.*``), and its end with the result."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    @classmethod
    def start(cls, config: TrainConfig) -> TrainingRun | None:
        """The run of ``config`` in its ``tracking_uri`` (None without one), params logged.

        Raises :class:`SettingsError`, before anything is written, when the store cannot take it
        (:func:`check_reachable`)."""
        if not config.tracking_uri:
            return None
        check_reachable(config.tracking_uri)
        task, optimizer = config.task.label, config.optimizer.name
        run = TrackedRun.create(config.tracking_uri, config.experiment, f"{task}-{optimizer}", {"hpo2.task": task})
        run.log_params({"optimizer": optimizer, "task": task, "seed": config.seed, **flatten_params(
            "", config.optimizer.settings), **flatten_params("task", config.task.settings)})
        return cls(run)

    def evaluation(self, evaluation: Evaluation) -> None:
        self.run.log_metrics(evaluation.metrics(), step=evaluation.step)

    def step(self, step: int, diagnostics: dict[str, Any]) -> None:
        self.run.log_metrics(prefixed("diag", diagnostics), step=step)

    def failed(self) -> None:
        """End the run FAILED: training raised."""
        self.run.end("FAILED")

    def finish(self, result: TrainResult) -> None:
        """Tag the result's status and reason; end FINISHED, or FAILED when training diverged."""
        self.run.set_tags({"hpo2.status": result.status, "hpo2.reason": result.reason})
        self.run.end("FINISHED" if result.status != "diverged" else "FAILED")
