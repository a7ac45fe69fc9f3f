"""``hpo2 worker --trials-per-device N``: N processes per device share one study and
its exact trial budget; Ctrl-C of the parent stops every worker."""

from __future__ import annotations

import os
import re
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
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hpo2.study.workers import plan_slots, visible_gpus

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow


def test_slots_per_visible_gpu_each_seeing_its_own() -> None:
    slots = plan_slots(3, "auto", ["3", "5"], cores=16)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "3", "3", "5", "5", "5"]
    assert {s.device for s in slots} == {"cuda"} and {s.env["OMP_NUM_THREADS"] for s in slots} == {"2"}
    on_one = plan_slots(2, "cuda:1", ["3", "5"], cores=16)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in on_one] == ["5", "5"]
    cpu = plan_slots(2, "auto", [], cores=2)
    assert [(s.device, s.env["CUDA_VISIBLE_DEVICES"], s.env["OMP_NUM_THREADS"]) for s in cpu] == [("cpu", "", "1")] * 2
    assert len(plan_slots(4, "cpu", ["0", "1"], cores=16)) == 4
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 7"}) == ["2", "7"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda", "no CUDA device is visible"), ("cuda:2", "allowed: cuda:0..cuda:1"), ("tpu", "is not a device")],
)
def test_impossible_devices_are_refused_by_name(device: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_slots(1, device, [] if device == "cuda" else ["0", "1"], cores=2)


def write_study(folder: Path, template: Path, n_trials: int) -> Path:
    shutil.copy(template, folder / "mlflow.db")
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump({
        "name": "pool", "task": "logreg_breast_cancer", "budget": {"epochs": 1}, "optimizers": ["sgd", "adam"],
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": n_trials, "report": False,
        "confirm": False,
        "curvature_diagnostics": False, "storage": f"journal:{folder / 'pool.journal'}",
    }))  # fmt: skip
    return path


def load(folder: Path) -> tuple[optuna.Study, list]:
    storage = JournalStorage(JournalFileBackend(str(folder / "pool.journal")))
    study = optuna.load_study(study_name="pool", storage=storage)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pool").experiment_id], max_results=1000)
    return study, runs


def worker_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"started worker cpu #\d \(pid (\d+)\)", output)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_pool(path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "hpo2", "worker", str(path), "--trials-per-device", "2", "--device", "cpu"]
    return subprocess.Popen(command, cwd=path.parent, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def interrupt_when_paused(proc: subprocess.Popen[str], pause: Path) -> str:
    """Ctrl-C (SIGINT to the parent alone, as a terminal without its process group) once a worker is inside a trial."""
    try:
        deadline = time.time() + 240
        while not pause.exists():
            assert proc.poll() is None and time.time() < deadline, "no worker reached a training step"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_workers_per_cpu_stop_on_ctrl_c_and_resume_to_exactly_n_trials(tmp_path: Path, mlflow_db_template: Path,
                                                                          ) -> None:
    path = write_study(tmp_path, mlflow_db_template, n_trials=4)
    pause = tmp_path / "paused"
    first = start_pool(path, {**os.environ, "HPO2_TEST_PAUSE_AT": "step", "HPO2_TEST_PAUSE_FILE": str(pause)})
    out = interrupt_when_paused(first, pause)
    assert first.returncode == 130, out
    assert "interrupted: every worker stopped" in out and "Traceback" not in out, out
    pids = worker_pids(out)
    assert len(pids) == 2 and not any(alive(p) for p in pids)
    study, runs = load(tmp_path)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states and TrialState.WAITING in states, states
    assert not [r for r in runs if r.info.status == "RUNNING"]

    second = start_pool(path)
    out = second.communicate(timeout=600)[0]
    assert second.returncode == 0, out
    assert "[cpu #0]" in out and "[cpu #1]" in out  # both ran, their output relayed
    assert not any(alive(p) for p in worker_pids(out))
    study, runs = load(tmp_path)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    finished = {int(r.data.tags["hpo2.trial_number"]) for r in runs
                if "hpo2.trial_number" in r.data.tags and r.info.status == "FINISHED"}  # fmt: skip
    assert finished == {t.number for t in complete}
    assert not [r for r in runs if r.info.status == "RUNNING"]
