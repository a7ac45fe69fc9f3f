"""Real servers for the reliability tests: a PostgreSQL cluster in a temporary
folder (Debian's ``postgresql`` package, which .ci/run installs) and an MLflow
tracking server on it, both on 127.0.0.1."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the 'postgres' user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def _cluster() -> Iterator[dict[str, Any]]:
    """A new PostgreSQL cluster on 127.0.0.1 with the databases 'optuna' and 'mlflow';
    ``restart()`` restarts it as ``pg_ctlcluster ... restart -m fast`` does."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="hpo2-pg-"))
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (root, data, sock):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    run = lambda *cmd: subprocess.run(_as_postgres([str(bindir / cmd[0]), *cmd[1:]]), check=True, capture_output=True)  # noqa: E731
    options = ["-D", str(data), "-o", f"-p {port} -k {sock} -h 127.0.0.1", "-l", str(root / "log"), "-w"]
    run("initdb", "-D", str(data), "-A", "trust", "-U", "hpo2")
    run("pg_ctl", *options, "start")
    try:
        for db in ("optuna", "mlflow"):
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "hpo2", db)
        base = f"postgresql+psycopg2://hpo2@127.0.0.1:{port}"
        yield {"optuna": f"{base}/optuna", "mlflow": f"{base}/mlflow", "port": str(port), "base": base,
               "createdb": str(bindir / "createdb"),
               "restart": lambda: run("pg_ctl", *options, "-m", "fast", "restart")}
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, Any]]:
    """A PostgreSQL cluster shared by the session's tests (never restarted)."""
    with _cluster() as cluster:
        yield cluster


@pytest.fixture
def restartable_postgres() -> Iterator[dict[str, Any]]:
    """A PostgreSQL cluster of the test's own, which it may restart (``cluster["restart"]()``)."""
    with _cluster() as cluster:
        yield cluster


@pytest.fixture
def fresh_database(postgres: dict[str, Any], request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database on the test cluster (no Optuna tables yet)."""
    name = "db_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-40:]
    subprocess.run(_as_postgres([postgres["createdb"], "-h", "127.0.0.1", "-p", postgres["port"], "-U", "hpo2", name]),
                   check=True, capture_output=True)  # fmt: skip
    return f"{postgres['base']}/{name}"


def wait_http(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds}s")


@pytest.fixture(scope="session")
def mlflow_server(postgres: dict[str, Any]) -> Iterator[str]:
    """``mlflow server`` on the PostgreSQL 'mlflow' database, bound to 127.0.0.1."""
    port = free_port()
    artifacts = tempfile.mkdtemp(prefix="hpo2-artifacts-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres["mlflow"],
         "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(artifacts, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_db_template() -> Iterator[Path]:
    """An empty MLflow sqlite store, its tables created once: each test copies it
    (creating the tables takes seconds, which add up over many subprocess tests)."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="hpo2-mlflow-db-"))
    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    try:
        yield folder / "mlflow.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
