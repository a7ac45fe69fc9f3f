"""A study killed (SIGKILL) or interrupted (Ctrl-C, SIGTERM) at chosen moments, then
resumed with the same command: it ends with exactly ``n_trials`` complete or pruned
trials, nothing RUNNING or WAITING in Optuna or MLflow, the paper defaults
evaluated, and every trial's MLflow run closed with the right status.

The moments come from the ``HPO2_TEST_PAUSE_AT`` hook (:func:`hpo2.study.recovery.pause_for_tests`):
``before_run`` (the trial exists, its MLflow run does not), ``after_run`` (the run
exists, the trial's ``hpo2.mlflow_run_id`` attribute does not), ``step`` (mid-epoch),
``report`` (the study report at the end).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.study.budget import retried_trial_numbers
from hpo2.study.config import load_study_config
from hpo2.study.results import mlflow_run_id
from hpo2.study.space import SearchSpace

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow

N_TRIALS = 3
OPTIMIZERS = ["adam", "sgd"]  # trials 0 and 1 are their paper defaults


def cut_trial(sig: signal.Signals) -> int:
    """The trial cut short: a kill lands in the last trial, when the dead trial fills the budget
    (Optuna's own stale check is never reached then); Ctrl-C in a paper-default trial, which
    must still be evaluated."""
    return N_TRIALS - 1 if sig == signal.SIGKILL else 0


def write_study(folder: Path, template: Path, name: str, storage: str | None, report: bool = False) -> Path:
    shutil.copy(template, folder / "mlflow.db")
    path = folder / f"{name}.yaml"
    study = {
        "name": name, "task": "digits_mlp", "budget": {"epochs": 1}, "optimizers": OPTIMIZERS,
        "n_trials": N_TRIALS, "heartbeat_interval": 1, "pruner": {"name": "none"},
        "sampler": {"name": "random", "seed": 0},
        "curvature_diagnostics": False, "report": report, "confirm": False, "device": "cpu",
    }  # fmt: skip
    if storage is not None:
        study["storage"] = storage
    path.write_text(yaml.safe_dump(study))
    return path


def run_until_paused(path: Path, point: str, sig: signal.Signals) -> subprocess.CompletedProcess:
    """Start `hpo2 study run`, wait for it to reach ``point`` (in :func:`cut_trial`, if a trial's), send ``sig``."""
    pause_file = path.parent / "paused"
    pause_file.unlink(missing_ok=True)
    at = point if point == "report" else f"{point}:{cut_trial(sig)}"
    env = {**os.environ, "HPO2_TEST_PAUSE_AT": at, "HPO2_TEST_PAUSE_FILE": str(pause_file)}
    proc = subprocess.Popen([sys.executable, "-m", "hpo2", "study", "run", str(path)], cwd=path.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not pause_file.exists():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                out, err = proc.communicate(timeout=30)
                pytest.fail(f"never reached {point} (exit {proc.returncode}):\n{out}\n{err}")
            time.sleep(0.1)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def load(path: Path) -> tuple[optuna.Study, MlflowClient, list]:
    config, file = load_study_config(path)
    storage = config.storage or f"sqlite:///{file.parent / (config.name + '.optuna.db')}"
    study = optuna.load_study(study_name=config.name, storage=storage)
    client = MlflowClient(f"sqlite:///{file.parent / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(config.name).experiment_id], max_results=1000)
    return study, client, runs


def assert_study_whole(path: Path) -> tuple[optuna.Study, list]:
    """n_trials complete/pruned, nothing running or waiting, defaults evaluated, MLflow agrees."""
    study, client, runs = load(path)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == N_TRIALS, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    retried = retried_trial_numbers(trials)
    assert all(t.number in retried for t in trials if t.state == TrialState.FAIL), states
    finished_params = [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    space = SearchSpace(load_study_config(path)[0])
    for name in OPTIMIZERS:
        assert space.optimizers[name].default_params() in finished_params, f"{name}'s paper defaults never evaluated"

    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parent = [r for r in runs if r.data.tags.get("hpo2.role") == "study"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    by_id = {r.info.run_id: r for r in runs}
    for t in trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            run = by_id[mlflow_run_id(study, t)]
            assert run.data.tags["hpo2.trial_number"] == str(t.number)
            assert run.info.status == ("FINISHED" if t.state == TrialState.COMPLETE else "KILLED")
    return study, runs


def assert_interrupted_cleanly(path: Path, point: str, first: subprocess.CompletedProcess) -> None:
    """Right after Ctrl-C or SIGTERM: one line, exit 130, the trial failed and its copy waiting, runs KILLED."""
    assert first.returncode == 130, first.stdout + first.stderr
    what = "no trial was cut short" if point == "report" else "trial 0 will be retried"
    assert f"interrupted: {what}; rerun the same command to resume" in first.stdout
    assert "Traceback" not in first.stdout + first.stderr, first.stderr
    study, _, runs = load(path)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert {r.data.tags.get("hpo2.role", "trial") for r in killed} == (
        {"study"} if point in ("report", "before_run") else {"study", "trial"}
    )
    assert all(r.data.tags["hpo2.reason"] == "interrupted" for r in killed)
    if point != "report":
        trials = study.trials
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
        assert trials[2].params == trials[0].params and trials[2].system_attrs["failed_trial"] == 0


SCENARIOS = [
    ("before_run", signal.SIGKILL), ("after_run", signal.SIGKILL), ("step", signal.SIGKILL), ("report", signal.SIGKILL),
    ("before_run", signal.SIGINT), ("after_run", signal.SIGINT), ("step", signal.SIGINT), ("report", signal.SIGINT),
    ("step", signal.SIGTERM),
]  # fmt: skip


def _scenario(path: Path, point: str, sig: signal.Signals) -> None:
    first = run_until_paused(path, point, sig)
    if sig == signal.SIGKILL:
        assert first.returncode == -signal.SIGKILL
        time.sleep(2.5)  # the grace period (2 heartbeats) passes
    else:
        assert_interrupted_cleanly(path, point, first)

    again = CliRunner().invoke(app, ["study", "run", str(path)])
    assert again.exit_code == 0, again.output
    study, runs = assert_study_whole(path)
    if point == "report":
        return
    assert study.trials[cut_trial(sig)].state == TrialState.FAIL
    lost = [r for r in runs if r.data.tags.get("hpo2.trial_number") == str(cut_trial(sig))]
    assert len(lost) == (0 if point == "before_run" else 1)
    for run in lost:  # the cut-short attempt's run is closed, with why
        assert run.info.status == "KILLED"
        assert ("worker lost" if sig == signal.SIGKILL else "interrupted") in run.data.tags["hpo2.reason"]


@pytest.mark.parametrize(("point", "sig"), SCENARIOS, ids=[f"{p}-{s.name}" for p, s in SCENARIOS])
def test_sqlite_study_killed_or_interrupted_resumes_whole(tmp_path, mlflow_db_template, point, sig):
    path = write_study(tmp_path, mlflow_db_template, "s", None, report=point == "report")
    _scenario(path, point, sig)


PG_SCENARIOS = [("after_run", signal.SIGKILL), ("step", signal.SIGINT)]


@pytest.mark.parametrize(("point", "sig"), PG_SCENARIOS, ids=[f"{p}-{s.name}" for p, s in PG_SCENARIOS])
def test_postgres_study_killed_or_interrupted_resumes_whole(tmp_path, mlflow_db_template, postgres, point, sig):
    path = write_study(tmp_path, mlflow_db_template, f"pg-{point}-{sig.name}", postgres["optuna"])
    _scenario(path, point, sig)


def test_study_timeout_ends_an_endless_trial_and_an_endless_budget_without_timeout_is_refused(
    tmp_path, mlflow_db_template
):
    path = write_study(tmp_path, mlflow_db_template, "t", None)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "budget": {"epochs": float("inf")}, "n_trials": 2}))
    refused = CliRunner().invoke(app, ["study", "run", str(path)])
    assert refused.exit_code == 2 and "budget.epochs = inf" in " ".join(refused.output.split())

    # the longest budget a file may ask for: the study's timeout must still end the trial
    path.write_text(yaml.safe_dump({**data, "budget": {"epochs": 100_000}, "n_trials": 2, "timeout": 4}))
    started = time.monotonic()
    # a subprocess: on a study that never ends the test fails instead of hanging
    done = subprocess.run([sys.executable, "-m", "hpo2", "study", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}")
    (trial,) = [t for t in study.trials if t.state.is_finished()]  # the timeout ended the first trial and the study
    assert trial.state == TrialState.PRUNED and "timeout" in trial.user_attrs["hpo2.reason"]
