"""The confirmation stage under kill and resume: a worker SIGKILLed during a confirmation run,
and a rerun that finishes exactly the missing runs (no run twice, none lost)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo2.study.confirm import CONFIRM_OF_ATTR
from hpo2.study.trial_reporter import SEED_ATTR

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow

SEEDS = 3


def _confirm_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="k.confirm", storage=storage).trials
    except KeyError:
        return []


def test_a_worker_killed_mid_confirmation_is_resumed_to_exactly_the_planned_runs(tmp_path: Path):
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({
        "name": "k", "task": "logreg_breast_cancer", "budget": {"steps": 1_000_000, "seconds": 2},
        "optimizers": ["sgd"], "n_trials": 2, "heartbeat_interval": 1, "report": False,
        "curvature_diagnostics": False, "pruner": {"name": "none"}, "confirm": {"top_k": 1, "seeds": SEEDS},
    }))  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'k.optuna.db'}"
    command = [sys.executable, "-m", "hpo2", "study", "run", str(path), "--device", "cpu"]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # the second confirmation run is training: kill it there
            if any(t.number == 1 and t.state == TrialState.RUNNING and "hpo2.mlflow_run_id" in t.user_attrs
                   for t in _confirm_trials(storage)):  # fmt: skip
                break
            time.sleep(0.2)
        else:
            pytest.fail("confirmation run 1 never started")
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait(timeout=30)
    killed = _confirm_trials(storage)
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING]

    rerun = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr

    trials = _confirm_trials(storage)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pairs = Counter((t.user_attrs[CONFIRM_OF_ATTR], t.user_attrs[SEED_ATTR]) for t in complete)
    assert len(complete) == SEEDS and set(pairs.values()) == {1}  # each (finalist, seed) once
    assert {seed for _, seed in pairs} == {1_000_000, 1_000_001, 1_000_002}
    assert trials[1].state == TrialState.FAIL and len(trials) == SEEDS + 1  # the killed run, retried once
    search = optuna.load_study(study_name="k", storage=storage)
    assert len(search.trials) == 2  # no search trial was added by the resume

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("k").experiment_id
    runs = client.search_runs([experiment], "tags.`hpo2.study` = 'k.confirm'")
    assert Counter(r.info.status for r in runs) == {"FINISHED": SEEDS, "KILLED": 1}
    status = subprocess.run([*command[:3], "study", "status", str(path)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)  # fmt: skip
    assert f"confirmation: {SEEDS} of {SEEDS} runs done" in status.stdout, status.stdout + status.stderr
