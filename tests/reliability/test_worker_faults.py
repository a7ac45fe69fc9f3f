"""A worker killed mid-trial, and trials that break in the ways real training breaks."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from torch import nn

from hpo2.study.config import load_study_config
from hpo2.study.runner import StudyRunner
from hpo2.tasks import TASKS, Split, Task, TaskSettings, TaskSpec
from hpo2.tasks.base import accuracy

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_sigkilled_worker_trial_is_failed_retried_and_its_run_closed(tmp_path: Path):
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({
        "name": "k", "task": "digits_mlp", "budget": {"steps": 1_000_000, "seconds": 3}, "optimizers": ["adam"],
        "n_trials": 3, "heartbeat_interval": 1, "report": False, "confirm": False, "pruner": {"name": "none"},
    }))  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'k.optuna.db'}"
    worker = subprocess.Popen([sys.executable, "-m", "hpo2", "study", "run", str(path), "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                trials = optuna.load_study(study_name="k", storage=storage).trials
            except KeyError:
                trials = []
            if any(
                t.number == 1 and t.state == TrialState.RUNNING and "hpo2.mlflow_run_id" in t.user_attrs for t in trials
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail("trial 1 never started")
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.wait(timeout=30)
    time.sleep(3)  # the grace period (2 heartbeats) passes

    config, file = load_study_config(path)
    study = StudyRunner(config, file).run()
    trials = study.trials
    assert trials[0].state == TrialState.COMPLETE and trials[1].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    killed = client.get_run(trials[1].user_attrs["hpo2.mlflow_run_id"])
    assert killed.info.status == "KILLED" and "worker lost" in killed.data.tags["hpo2.reason"]
    assert client.get_run(trials[0].user_attrs["hpo2.mlflow_run_id"]).info.status == "FINISHED"


# -- tasks that break on purpose, registered for these tests only
BUILT: list[weakref.ref] = []


class Breaking(nn.Module):
    """A linear classifier whose forward breaks from training step ``after`` on."""

    def __init__(self, how: str, after: int) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.how, self.after, self.calls = how, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        out = self.linear(x)
        if self.training and self.calls > self.after:
            if self.how == "nan":
                return out * float("nan")
            if self.how == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return out


def _breaking_task(how: str) -> Task:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen)
    model = Breaking(how, after=3)
    BUILT.append(weakref.ref(model))
    return Task(
        name=f"breaking_{how}",
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        train=Split(x, y),
        valid=Split(x, y),
        test=None,
        batch_size=16,
        metric="accuracy",
        metric_fn=accuracy,
        higher_is_better=True,
        target=0.9,
    )


class ConcaveLoss(nn.Module):
    """-mean(z^2): every direction has negative curvature."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(outputs**2).mean()


def _concave_task() -> Task:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    return Task(name="concave", model=nn.Linear(4, 2), loss_fn=ConcaveLoss(), train=Split(x, torch.zeros(64)),
                valid=Split(x, torch.zeros(64)), test=None, batch_size=64, metric="loss", metric_fn=None,
                higher_is_better=False, target=-1.0)


@pytest.fixture(scope="module", autouse=True)
def breaking_tasks():
    for spec in (
        TaskSpec("breaking_nan", TaskSettings, lambda s: _breaking_task("nan"), "loss turns NaN after 3 steps", True,
                 metric="accuracy", target=0.9),
        TaskSpec(
            "breaking_oom",
            TaskSettings,
            lambda s: _breaking_task("oom"),
            "CUDA out of memory after 3 steps (simulated)",
            True,
            metric="accuracy",
            target=0.9,
        ),
        TaskSpec("concave", TaskSettings, lambda s: _concave_task(), "negative curvature everywhere", False,
                 metric="loss", target=-1.0),
    ):
        TASKS[spec.name] = spec
    yield
    for name in ("breaking_nan", "breaking_oom", "concave"):
        TASKS.pop(name, None)


def _run(tmp_path: Path, task: str, optimizers: list, n_trials: int = 2, budget: dict | None = None) -> optuna.Study:
    path = tmp_path / f"{task}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": task,
                "task": task,
                "budget": budget or {"epochs": 3},
                "optimizers": optimizers,
                "n_trials": n_trials,
                "report": False, "confirm": False,
                "pruner": {"name": "none"},
            }
        )
    )
    config, file = load_study_config(path)
    return StudyRunner(config, file).run()


def test_nan_loss_ends_the_trial_with_a_reason(tmp_path):
    study = _run(tmp_path, "breaking_nan", ["adam"])
    assert all(t.state == TrialState.PRUNED for t in study.trials)
    assert all(
        t.user_attrs["hpo2.status"] == "diverged" and "non-finite" in t.user_attrs["hpo2.reason"] for t in study.trials
    )


def test_negative_curvature_every_step_ends_the_trial_with_a_reason(tmp_path):
    study = _run(
        tmp_path, "concave", [{"name": "newton_cg", "fixed": {"damping": 0.0}}], n_trials=1, budget={"steps": 200}
    )
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["hpo2.status"] == "diverged"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(trial.user_attrs["hpo2.mlflow_run_id"], "diag.negative_curvature")
    assert history and all(m.value == 1.0 for m in history)  # CG met it on every step


def test_out_of_memory_fails_the_trial_alone_and_releases_its_memory(tmp_path):
    BUILT.clear()
    study = _run(tmp_path, "breaking_oom", ["adam", "sgd"], n_trials=2)
    assert all(t.state == TrialState.FAIL for t in study.trials)
    assert all("OutOfMemoryError" in t.user_attrs["hpo2.reason"] for t in study.trials)
    gc.collect()
    assert len(BUILT) >= 2 and all(ref() is None for ref in BUILT)  # no failed trial's model is kept alive


def test_a_worker_stopped_past_its_heartbeat_drops_the_trial_in_one_line_and_goes_on(tmp_path: Path):
    """SIGSTOP a worker mid-trial until its heartbeat goes stale; another worker's stale
    check fails and retries that trial.  Resumed (SIGCONT), the worker cannot store the
    trial's result: it says so in one line and runs on to exactly ``n_trials``."""
    path = tmp_path / "stopped.yaml"
    path.write_text(yaml.safe_dump({
        "name": "stopped", "task": "logreg_breast_cancer", "budget": {"steps": 1_000_000, "seconds": 3},
        "optimizers": ["sgd"], "n_trials": 3, "heartbeat_interval": 1, "report": False, "confirm": False,
        "curvature_diagnostics": False, "pruner": {"name": "none"},
    }))  # fmt: skip
    url = f"sqlite:///{tmp_path / 'stopped.optuna.db'}"
    worker = subprocess.Popen([sys.executable, "-m", "hpo2", "study", "run", str(path), "--device", "cpu"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                trials = optuna.load_study(study_name="stopped", storage=url).trials
            except KeyError:
                trials = []
            if any(t.number == 0 and t.state == TrialState.RUNNING and "hpo2.mlflow_run_id" in t.user_attrs
                   for t in trials):
                break
            time.sleep(0.1)
        else:
            pytest.fail("trial 0 never started")
        worker.send_signal(signal.SIGSTOP)
        time.sleep(3)  # past the grace period (2 heartbeats)
        # what another worker does before it counts the trials: fail the stale ones and retry them
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2,
                                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(2))
        optuna.storages.fail_stale_trials(optuna.load_study(study_name="stopped", storage=storage))
        worker.send_signal(signal.SIGCONT)
        output = worker.communicate(timeout=300)[0].decode()
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == 0 and "Traceback" not in output, output[-4000:]
    assert "trial 0 was failed as stale while it ran (no heartbeat for 2 s): its result is dropped; " \
           "its retry runs instead" in " ".join(output.split()), output[-4000:]
    trials = optuna.load_study(study_name="stopped", storage=url).trials
    assert trials[0].state == TrialState.FAIL and sum(t.state == TrialState.COMPLETE for t in trials) == 3
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(trials[0].user_attrs["hpo2.mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["hpo2.status"] == "stale"
