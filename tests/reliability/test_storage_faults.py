"""Storage faults under a running study: its PostgreSQL server restarts
(``pg_ctl restart -m fast``), its sqlite file stays locked past the busy timeout."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from torch import nn
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.study.budget import retried_trial_numbers
from hpo2.study.config import load_study_config
from hpo2.study.runner import StudyRunner
from hpo2.tasks import TASKS, Split, Task, TaskSettings, TaskSpec
from hpo2.tasks.base import accuracy

# end to end: real processes and a real PostgreSQL server (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow

N_TRIALS = 10


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="restart", storage=url).trials
    except KeyError:  # not created yet
        return []


def _wait_for(url: str, done: int, workers: list[subprocess.Popen]) -> None:
    """Until ``done`` trials are finished and one is running (fails at once if a worker died)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for w in workers:
            if w.poll() is not None:
                pytest.fail(f"a worker exited {w.returncode} early:\n{w.communicate()[0].decode()[-4000:]}")
        trials = _trials(url)
        if sum(t.state.is_finished() for t in trials) >= done and any(t.state == TrialState.RUNNING for t in trials):
            return
        time.sleep(0.1)
    pytest.fail(f"the study never had {done} finished trials and a running one")


def test_a_postgresql_restart_mid_study_loses_no_trial_and_no_worker(
    tmp_path: Path, restartable_postgres: dict[str, Any]
):
    url = restartable_postgres["optuna"]
    study_file = tmp_path / "restart.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "restart", "task": "logreg_breast_cancer", "budget": {"steps": 1_000_000, "seconds": 1},
        "optimizers": ["sgd", "adam", "lbfgs"], "n_trials": N_TRIALS, "heartbeat_interval": 1, "report": False,
        "confirm": False,
        "curvature_diagnostics": False, "pruner": {"name": "none"},
    }))  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "hpo2", "worker", str(study_file), "--storage", url, "--device", "cpu"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
               for _ in range(2)]  # fmt: skip
    try:
        for done in (2, 5):  # two restarts, each while trials run and heartbeats beat every second
            _wait_for(url, done, workers)
            restartable_postgres["restart"]()
        outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    finally:
        for w in workers:
            w.kill()
            w.wait()
    for w, out in zip(workers, outputs, strict=True):
        assert w.returncode == 0 and "Traceback" not in out, out[-4000:]

    trials = _trials(url)
    retried = retried_trial_numbers(trials)
    assert all(t.state.is_finished() for t in trials), [(t.number, t.state.name) for t in trials]
    # a trial the restart failed is a fault, retried: never a result, never counted
    assert all(t.number in retried for t in trials if t.state == TrialState.FAIL)
    results = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(results) == N_TRIALS, [(t.number, t.state.name, t.system_attrs.get("failed_trial")) for t in trials]


# -- a storage fault inside one trial: another connection holds the sqlite storage locked past its busy timeout
LOCK_SECONDS = 7.0  # longer than sqlite's 5 s busy timeout: the trial's next write fails with "database is locked"
LOCKED = threading.Event()  # set once the first trial built has locked the storage
UNLOCK = threading.Event()  # set by a test to end the lock before LOCK_SECONDS (or a longer lock) have passed


class LocksTheStorage(nn.Module):
    """A linear classifier that, at its 5th training step of the first trial built, has
    another connection lock the study's sqlite storage for ``seconds`` (or until :data:`UNLOCK`)."""

    def __init__(self, database: Path, seconds: float) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.database, self.seconds, self.calls = database, seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        if self.training and self.calls == 5 and not LOCKED.is_set():
            LOCKED.set()
            held = threading.Event()
            threading.Thread(target=_hold_lock, args=(self.database, held, self.seconds), daemon=True).start()
            held.wait(10)
        return self.linear(x)


def _hold_lock(database: Path, held: threading.Event, seconds: float) -> None:
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("BEGIN EXCLUSIVE")
        held.set()
        UNLOCK.wait(seconds)
        conn.rollback()


def _locking_task(database: Path, seconds: float = LOCK_SECONDS) -> Task:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    return Task(name="locks_storage", model=LocksTheStorage(database, seconds), loss_fn=nn.CrossEntropyLoss(),
                train=Split(x, y), valid=Split(x, y), test=None, batch_size=16, metric="accuracy",
                metric_fn=accuracy, higher_is_better=True, target=0.9)  # fmt: skip


@pytest.fixture
def locking_task() -> Iterator[Callable[..., None]]:
    """Registers the task ``locks_storage`` (``register(database, seconds)``) for one test."""

    def register(database: Path, seconds: float = LOCK_SECONDS) -> None:
        TASKS["locks_storage"] = TaskSpec("locks_storage", TaskSettings, lambda s: _locking_task(database, seconds),
                                          "locks its study's storage once", True, metric="accuracy",
                                          target=0.9)  # fmt: skip

    LOCKED.clear()
    UNLOCK.clear()
    yield register
    UNLOCK.set()
    TASKS.pop("locks_storage", None)


def test_a_storage_fault_inside_a_trial_is_retried_not_counted_and_the_worker_goes_on(tmp_path: Path, locking_task):
    path = tmp_path / "locked.yaml"
    path.write_text(yaml.safe_dump({
        "name": "locked", "task": "locks_storage", "budget": {"epochs": 4}, "optimizers": ["sgd", "adam"],
        "n_trials": 3, "report": False, "confirm": False, "curvature_diagnostics": False, "pruner": {"name": "none"},
    }))  # fmt: skip
    database = tmp_path / "locked.optuna.db"
    locking_task(database)
    config, file = load_study_config(path)
    runner = StudyRunner(config, file)
    assert runner.storage_url == f"sqlite:///{database}"
    study = runner.run()
    assert LOCKED.is_set()

    trials = study.trials
    assert trials[0].state == TrialState.FAIL  # the trial the lock hit, failed as a fault ...
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE  # ... and retried, with its params
    assert retry[0].params == trials[0].params
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 3  # n_trials results, the fault not among them

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(retry[0].user_attrs["hpo2.mlflow_run_id"])
    faulted = client.search_runs([run.info.experiment_id], "tags.`hpo2.trial_number` = '0'")
    assert [r.info.status for r in faulted] == ["KILLED"]
    assert faulted[0].data.tags["hpo2.status"] == "storage fault"
    assert "database is locked" in faulted[0].data.tags["hpo2.reason"]


def test_a_storage_that_stays_unusable_stops_the_worker_in_one_line_and_the_rerun_retries_its_trial(
    tmp_path: Path, locking_task
):
    path = tmp_path / "stuck.yaml"
    path.write_text(yaml.safe_dump({
        "name": "stuck", "task": "locks_storage", "budget": {"epochs": 4}, "optimizers": ["sgd"], "n_trials": 2,
        "heartbeat_interval": 1, "report": False, "confirm": False,
        "curvature_diagnostics": False, "pruner": {"name": "none"},
    }))  # fmt: skip
    database = tmp_path / "stuck.optuna.db"
    locking_task(database, seconds=300)  # locked until UNLOCK
    stopped = CliRunner().invoke(app, ["study", "run", str(path), "--device", "cpu"])
    line = " ".join(stopped.output.split())
    assert stopped.exit_code == 2 and "Traceback" not in stopped.output, stopped.output
    assert (f"error: storage sqlite:///{database} stays unusable (OperationalError: database is locked); this "
            "worker stops: rerun it once the database works; trial 0 is retried then") in line, line

    UNLOCK.set()
    rerun = CliRunner().invoke(app, ["study", "run", str(path), "--device", "cpu"])
    assert rerun.exit_code == 0, rerun.output
    trials = optuna.load_study(study_name="stuck", storage=f"sqlite:///{database}").trials
    assert trials[0].state == TrialState.FAIL  # failed as stale by the rerun, and retried
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
