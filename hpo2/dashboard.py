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
* **Which page.**  MLflow 3's UI opens an experiment on its GenAI overview;
  the runs table is the route ``#/experiments/<id>/runs`` (:func:`runs_url`).
* **Its command line.**  The store's URL, which may hold a password, goes to the
  server in its environment (:func:`server_env`), not in its arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from hpo2.databases import local_file
from hpo2.errors import SettingsError
from hpo2.study.locate import STUDIES_ENV, search_folders, studies_folder

STORE_FILE = "mlflow.db"
STOP_SECONDS = 10.0


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


def runs_url(host: str, port: int, experiment_id: str) -> str:
    """The experiment's runs table in MLflow 3's UI (not its GenAI overview)."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def server_command(host: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow server`` with ``workers`` uvicorn workers; its store comes from :func:`server_env`."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
            "--workers", str(workers)]  # fmt: skip


def server_env(uri: str) -> dict[str, str]:
    """The environment of the server: the store to serve, ``uri``, in ``MLFLOW_BACKEND_STORE_URI``
    (what ``--backend-store-uri`` reads: a password in the URL stays out of the command line,
    which every local user can read with ``ps``), and MLflow's GenAI job runners off (hpo2
    runs no judges or jobs)."""
    return {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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


def serve(commands: Sequence[list[str]], env: dict[str, str]) -> int:
    """Run ``commands`` (the first is the main server) with environment ``env``, each in
    its own session, until the main one exits or Ctrl-C / SIGTERM arrives; then stop
    every process group.  Returns the main server's exit code (0 when stopped by a signal)."""
    procs: list[subprocess.Popen[bytes]] = []
    with _signals_as_interrupt():
        try:
            for command in commands:
                procs.append(subprocess.Popen(command, env=env, start_new_session=True))
            return procs[0].wait()
        except KeyboardInterrupt:
            return 0
        finally:
            for proc in procs:
                stop_group(proc)
