"""``hpo2 dashboard``: the MLflow UI over the project's tracking store.

Three things the plain ``mlflow server`` gets wrong for this use:

* **Which store.**  Run from another directory, ``mlflow server`` silently creates
  and serves an empty ``./mlflow.db``.  :func:`tracking_store` finds the store the
  studies wrote to (``mlflow.db`` in the project's studies folder, found upward
  from the current directory, or the store of a given study) and refuses, rather
  than create an empty one, unless a tracking URI is given explicitly.
* **Its processes.**  ``mlflow server`` starts 4 uvicorn workers plus a pool of
  GenAI job runners (huey consumers); hpo2 needs one worker and no job runner.
  It runs in its own session, and every way out of :func:`serve` (Ctrl-C,
  SIGTERM, the server exiting) stops that whole process group.
* **Which page.**  MLflow 3's UI opens an experiment on its GenAI overview, and its
  runs table shows a study as one collapsed parent run without a metric column.
  :func:`study_links` saves, for each study, a view of its trials ranked by the
  objective (MLflow's shared view: an experiment tag ``mlflow.sharedViewState.KEY``
  holding the view's JSON, opened by ``?viewStateShareKey=KEY``; :func:`ranked_trials_view`).
* **When it is there.**  The server needs seconds to tens of seconds to start: the
  links are printed once it answers (:func:`wait_until_answering`).
* **Its noise.**  No access log, no INFO lines, no Starlette deprecation warning
  (:func:`server_command`, :func:`server_env`).
* **Its command line.**  The store's URL, which may hold a password, goes to the
  server in its environment (:func:`server_env`), not in its arguments.
* **A killed dashboard.**  The server gets SIGTERM when ``hpo2 dashboard`` dies,
  even of SIGKILL (the parent-death signal of :func:`hpo2.study.workers.die_with_parent`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hpo2.common.databases import local_file
from hpo2.errors import SettingsError
from hpo2.study.locate import STUDIES_ENV, search_folders, studies_folder
from hpo2.study.workers import die_with_parent

STORE_FILE = "mlflow.db"
STOP_SECONDS = 10.0
#: how long to wait for the server to answer before printing its links anyway
READY_SECONDS = 180.0
#: MLflow UI's shared views: an experiment tag with this prefix and the view's key holds the view's JSON
SHARED_VIEW_TAG = "mlflow.sharedViewState."
#: the trial columns shown beside the objective(s): cost and outcome
TRIAL_METRICS = ("valid_metric", "grad_equivalents", "wall_seconds", "time_to_target_seconds")
#: the server's uvicorn: warnings and errors only, no line per request
UVICORN_OPTS = "--log-level warning --no-access-log"
#: raised by MLflow's own import of starlette.middleware.wsgi: nothing the user can act on
QUIET_WARNINGS = "ignore:starlette.middleware.wsgi is deprecated"


def tracking_store(tracking_uri: str | None = None, study: str | None = None, cwd: Path | None = None) -> str:
    """The tracking URI to serve: ``tracking_uri`` as given; else the store of
    ``study`` (a name or a study file); else ``mlflow.db`` in the project's studies
    folder.  Raises :class:`SettingsError` when no store exists (nothing is created)."""
    if tracking_uri:
        return tracking_uri
    if study is not None:
        from hpo2.study.config import default_tracking_uri, load_study_config
        from hpo2.study.locate import find_study_file

        config, path = load_study_config(find_study_file(study, cwd))
        return _existing(default_tracking_uri(config, path), f"the store of study {config.name!r}")
    folder = studies_folder(cwd)
    if folder is not None and (folder / STORE_FILE).is_file():
        return f"sqlite:///{folder / STORE_FILE}"
    looked = ", ".join(str(f / STORE_FILE) for f in ([folder] if folder else search_folders(cwd)[1:]))
    raise SettingsError(
        f"no MLflow store to serve: looked for {looked}. Run a study first (hpo2 study run studies/quickstart.yaml), "
        f"run from the project folder, pass --study NAME, set {STUDIES_ENV}, or give --tracking-uri URI"
    )


def _existing(uri: str, what: str) -> str:
    """``uri`` unless it names a sqlite file that does not exist."""
    store = local_file(uri)
    if store is not None and not store.is_file():
        raise SettingsError(f"{what} ({uri}) does not exist yet: run the study first, or give --tracking-uri URI")
    return uri


def runs_url(host: str, port: int, experiment_id: str, view: str | None = None) -> str:
    """The experiment's runs table in MLflow 3's UI (not its GenAI overview), in the shared view ``view`` if given."""
    url = f"http://{host}:{port}/#/experiments/{experiment_id}/runs"
    return f"{url}?viewStateShareKey={view}" if view else url


def _column(kind: str, key: str) -> str:
    """A column (and sort key) of MLflow's runs table: ``metrics.`valid_metric```."""
    return f"{kind}.`{key}`"


def ranked_trials_view(parent: Run) -> dict[str, Any]:
    """The MLflow UI view of a study's trials, given the study's parent run: its nested
    runs only (not collapsed under the parent), best first on the first objective (its
    direction from the parent's ``hpo2.directions`` tag; unsorted without it), with the
    objectives, cost, optimizer and outcome as columns."""
    objectives = parent.data.params.get("objective", "valid_metric").split(",")
    direction = parent.data.tags.get("hpo2.directions", "").split(",")[0]
    metrics = dict.fromkeys([*objectives, *TRIAL_METRICS])  # ordered, each once
    view: dict[str, Any] = {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        "selectedColumns": [*(_column("metrics", m) for m in metrics), _column("params", "optimizer"),
                            _column("tags", "hpo2.status")],
    }  # fmt: skip
    if direction in ("minimize", "maximize"):
        view |= {"orderByKey": _column("metrics", objectives[0]), "orderByAsc": direction == "minimize"}
    return view


@dataclass(frozen=True)
class Link:
    """A page to print: what it shows, its experiment, and its shared view (None: the plain runs table)."""

    label: str
    experiment_id: str
    view: str | None = None


def study_links(client: MlflowClient) -> list[Link]:
    """One link per study in the store (its trials ranked, saved as a shared view of its
    experiment, replaced on every start) and one per other experiment (its runs table)."""
    links: list[Link] = []
    for experiment in client.search_experiments():
        if experiment.name == "Default":
            continue
        parents = client.search_runs([experiment.experiment_id], "tags.`hpo2.role` = 'study'", max_results=1000)
        if not parents:
            links.append(Link(f"experiment {experiment.name}", experiment.experiment_id))
        for parent in sorted(parents, key=lambda run: run.data.tags.get("hpo2.study", "")):
            study = parent.data.tags.get("hpo2.study", parent.info.run_name)
            view = ranked_trials_view(parent)
            key = f"hpo2-{study}"  # a study's name is letters, digits, '_', '.', '-': safe in a URL
            try:
                client.set_experiment_tag(experiment.experiment_id, SHARED_VIEW_TAG + key, json.dumps(view))
            except MlflowException:  # a store we may not write: the plain runs table
                links.append(Link(f"study {study}", experiment.experiment_id))
                continue
            order = f"best first by {view['orderByKey'].split('`')[1]}" if "orderByKey" in view else "unsorted"
            links.append(Link(f"study {study}, its trials {order}", experiment.experiment_id, key))
    return links


def server_command(host: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow server`` with ``workers`` uvicorn workers, no request log; its store comes from :func:`server_env`."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--workers", str(workers), "--uvicorn-opts", UVICORN_OPTS]  # fmt: skip


def server_env(uri: str) -> dict[str, str]:
    """The environment of the server: the store to serve, ``uri``, in ``MLFLOW_BACKEND_STORE_URI``
    and ``MLFLOW_REGISTRY_STORE_URI`` (what ``--backend-store-uri`` and ``--registry-store-uri``
    read: a password in the URL stays out of the command line, which every local user can read
    with ``ps``), MLflow's GenAI job runners off (hpo2 runs no judges or jobs), and MLflow's
    Starlette deprecation warning silenced."""
    warnings_filter = ",".join(f for f in (os.environ.get("PYTHONWARNINGS"), QUIET_WARNINGS) if f)
    return {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_REGISTRY_STORE_URI": uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONWARNINGS": warnings_filter}  # fmt: skip


def wait_until_answering(url: str, proc: subprocess.Popen[bytes], seconds: float = READY_SECONDS) -> bool:
    """Poll ``url`` until it answers (True), or ``proc`` exits or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    return False


def stop_group(proc: subprocess.Popen[bytes], timeout: float = STOP_SECONDS) -> None:
    """Stop ``proc`` and every process of its group: SIGTERM, then SIGKILL after ``timeout``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member of the group
            if not _group_alive(proc.pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM both raise KeyboardInterrupt, so either stops the servers.

    SIGINT gets Python's own handler back explicitly: a process started as a background
    job of a non-interactive shell (``hpo2 dashboard &`` in a script, a CI step) inherits
    SIGINT *ignored*, and Python then installs no handler, so ``kill -INT`` would be lost."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def serve(
    commands: Sequence[list[str]], env: dict[str, str], ready_url: str, on_ready: Callable[[bool], None],
    ready_seconds: float = READY_SECONDS,
) -> int:  # fmt: skip
    """Run ``commands`` (the first is the main server) with environment ``env``, each in
    its own session and stopped (SIGTERM) if this process dies; tell ``on_ready``, while the
    main one runs, whether ``ready_url`` answered (:func:`wait_until_answering`); run until the main one exits or
    Ctrl-C / SIGTERM arrives; then stop every process group.  Returns the main server's
    exit code (0 when stopped by a signal)."""
    procs: list[subprocess.Popen[bytes]] = []
    with _signals_as_interrupt():
        try:
            for command in commands:
                procs.append(subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=die_with_parent))
            answered = wait_until_answering(ready_url, procs[0], ready_seconds)
            if procs[0].poll() is None:
                on_ready(answered)
            return procs[0].wait()
        except KeyboardInterrupt:
            return 0
        finally:
            for proc in procs:
                stop_group(proc)
