"""Four worker processes on one study in a real PostgreSQL, logging to one MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

# end to end: real processes, servers or whole studies (deselected in the developer loop; CI runs them)
pytestmark = pytest.mark.slow


def test_four_workers_share_one_study_through_postgresql(tmp_path: Path, postgres, mlflow_server):
    study_file = tmp_path / "shared.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "shared", "task": "logreg_breast_cancer", "budget": {"epochs": 2},
        "optimizers": ["sgd", "adam", "newton_cg", "lbfgs"], "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "none"}, "n_trials": 24, "report": False, "confirm": False, "curvature_diagnostics": False,
    }))  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    workers = [
        subprocess.Popen([sys.executable, "-m", "hpo2", "worker", str(study_file), "--storage", postgres["optuna"],
                          "--tracking-uri", mlflow_server, "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        for _ in range(4)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), _failed_workers(workers, outputs)

    study = optuna.load_study(study_name="shared", storage=postgres["optuna"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(study.trials) == 24 and len(finished) == 24
    assert sorted(t.number for t in study.trials) == list(range(24))
    assert all(t.state == TrialState.COMPLETE for t in finished)

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], max_results=1000)
    trial_runs = {int(r.data.tags["hpo2.trial_number"]): r for r in runs if "hpo2.trial_number" in r.data.tags}
    assert sorted(trial_runs) == list(range(24))
    assert all(r.info.status == "FINISHED" for r in trial_runs.values())
    best_mlflow = max(trial_runs.values(), key=lambda r: r.data.metrics["valid_metric"])
    assert best_mlflow.data.metrics["valid_metric"] == study.best_value
    assert study.trials[int(best_mlflow.data.tags["hpo2.trial_number"])].value == study.best_value


# Each process stands for a worker on its own machine: its own copy of the study file (so no
# file lock is shared), started together on one new database and one MLflow server.
# Enqueueing is slowed by 2 s so that the workers' check-then-enqueue windows overlap unless serialized.
_OPEN_TOGETHER = """
import sys, time
from pathlib import Path
import optuna
enqueue = optuna.Study.enqueue_trial
optuna.Study.enqueue_trial = lambda *args, **kwargs: (time.sleep(2), enqueue(*args, **kwargs))[1]
from hpo2.study.config import load_study_config
from hpo2.study.runner import StudyRunner
config, path = load_study_config(sys.argv[1])
Path(sys.argv[2], "ready").touch()
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
runner = StudyRunner(config, path)
runner.run()
print("parent run", runner.parent.run_id)
"""


def test_workers_on_several_machines_create_one_study_one_parent_run_and_enqueue_defaults_once(
    tmp_path: Path, fresh_database: str, mlflow_server: str
):
    go = tmp_path / "go"
    workers = []
    for i in range(6):
        machine = tmp_path / f"machine{i}"
        machine.mkdir()
        (machine / "together.yaml").write_text(yaml.safe_dump({
            "name": "together", "task": "logreg_breast_cancer", "optimizers": ["sgd", "adam"], "n_trials": 2,
            "budget": {"epochs": 1}, "storage": fresh_database, "tracking_uri": mlflow_server, "report": False,
            "confirm": False,
            "curvature_diagnostics": False, "pruner": {"name": "none"},
        }))  # fmt: skip
        workers.append(subprocess.Popen([sys.executable, "-c", _OPEN_TOGETHER, str(machine / "together.yaml"),
                                         str(machine), str(go)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=machine))  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"machine{i}" / "ready").exists() for i in range(6)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), _failed_workers(workers, outputs)

    assert [s.study_name for s in optuna.get_all_study_summaries(fresh_database)] == ["together"]
    # the two paper-default trials were enqueued once: they fill the budget of 2, nothing waits
    study = optuna.load_study(study_name="together", storage=fresh_database)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["optimizer"] for t in study.trials) == ["adam", "sgd"]
    assert all(t.user_attrs.get("hpo2.paper_defaults") for t in study.trials)
    parents = {line.split()[-1] for out in outputs for line in out.splitlines() if line.startswith("parent run")}
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id],
                              filter_string="tags.`hpo2.role` = 'study'")
    assert len(parents) == 1 and [r.info.run_id for r in runs] == list(parents)


def _failed_workers(workers: list[subprocess.Popen], outputs: list[str]) -> str:
    """The exit code and the last lines of each worker that failed (the traceback is at the end)."""
    return "\n\n".join(f"worker {i} exited {w.returncode}:\n{out[-4000:]}"
                         for i, (w, out) in enumerate(zip(workers, outputs, strict=True)) if w.returncode != 0)


def test_journal_file_storage_shares_a_study_between_processes_on_one_machine(tmp_path: Path):
    study_file = tmp_path / "j.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "j", "task": "logreg_breast_cancer", "budget": {"epochs": 1}, "optimizers": ["sgd", "adam"],
        "n_trials": 8, "report": False, "confirm": False,
        "curvature_diagnostics": False, "storage": f"journal:{tmp_path / 'j.journal'}",
    }))  # fmt: skip
    workers = [subprocess.Popen([sys.executable, "-m", "hpo2", "worker", str(study_file), "--device", "cpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), _failed_workers(workers, outputs)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))
    assert sorted(t.number for t in study.trials) == list(range(8))
    assert all(t.state.is_finished() for t in study.trials)


def test_two_workers_and_a_resume_each_draw_their_own_trials(tmp_path: Path):
    """Replayed draws (issue 26, 9.1): two workers of one random study, and its resume,
    proposed the same settings, each process seeded alike.  Each now claims its own
    sampler stream (recorded on its trials) and all nine trials differ."""
    journal = tmp_path / "fresh.journal"
    study_file = tmp_path / "fresh.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "fresh", "task": "logreg_breast_cancer", "budget": {"steps": 1_000_000, "seconds": 1},
        "optimizers": ["sgd"], "sampler": {"name": "random"}, "enqueue_defaults": False, "n_trials": 6,
        "report": False, "confirm": False, "curvature_diagnostics": False, "pruner": {"name": "none"},
        "storage": f"journal:{journal}",
    }))  # fmt: skip
    workers = [subprocess.Popen([sys.executable, "-m", "hpo2", "worker", str(study_file), "--device", "cpu"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0].decode() for w in workers]
    assert all(w.returncode == 0 for w in workers), _failed_workers(workers, outputs)
    resume = subprocess.run([sys.executable, "-m", "hpo2", "study", "run", str(study_file), "--n-trials", "9",
                             "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from hpo2.study.samplers import STREAM_ATTR

    study = optuna.load_study(study_name="fresh", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 9 and all(t.state == TrialState.COMPLETE for t in trials)
    streams = [t.system_attrs[STREAM_ATTR] for t in trials]
    assert set(streams[:6]) == {0, 1} and streams[6:] == [2, 2, 2], streams  # both workers drew, then the resume
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 9, [t.params for t in trials]
