"""What a study run shows: elapsed time and ETA, a line per trial, rounded values,
named objectives, no library noise, and "nothing to do" on a finished study."""

from __future__ import annotations

import functools
import io
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.interface.progress import Progress, StudyDisplay, eta_seconds, live_display, round_values
from hpo2.interface.report import render_study_report
from hpo2.study.config import load_study_config
from hpo2.study.runner import StudyRunner

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 1, 1, 12, 0, 0)


def _trial(number: int, state: TrialState, seconds: float) -> FrozenTrial:
    start = NOW - timedelta(seconds=seconds) if state == TrialState.RUNNING else NOW
    done = None if state == TrialState.RUNNING else NOW + timedelta(seconds=seconds)
    return FrozenTrial(number=number, state=state, value=1.0 if state == TrialState.COMPLETE else None,
                       datetime_start=start, datetime_complete=done, params={"optimizer": "sgd"},
                       distributions={"optimizer": CategoricalDistribution(["sgd"])}, user_attrs={}, system_attrs={},
                       intermediate_values={}, trial_id=number)  # fmt: skip


def test_eta_is_the_mean_trial_duration_times_the_work_left_capped_by_the_timeout(monkeypatch) -> None:
    import hpo2.interface.progress

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[override]
            return NOW

    monkeypatch.setattr(hpo2.interface.progress, "datetime", Clock)
    trials = [
        _trial(0, TrialState.COMPLETE, 10.0),
        _trial(1, TrialState.PRUNED, 20.0),
        _trial(2, TrialState.RUNNING, 5.0),
    ]
    # mean 15 s; 3 trials left of 5, one of them 5 s in: 3 * 15 - 5 = 40 s
    assert eta_seconds(trials, target=5, elapsed=60.0, timeout=None) == pytest.approx(40.0)
    assert eta_seconds(trials, target=5, elapsed=60.0, timeout=None, jobs=2) == pytest.approx(20.0)
    assert eta_seconds(trials, target=5, elapsed=90.0, timeout=100.0) == pytest.approx(10.0)
    assert eta_seconds(trials, target=2, elapsed=60.0, timeout=None) == 0.0
    assert eta_seconds(trials[2:], target=5, elapsed=5.0, timeout=None) is None  # nothing finished yet
    assert round_values([0.9666666388511658]) == "0.96667"
    assert round_values([0.5, 1234567.0]) == "0.5, 1.2346e+06"


def _study_file(folder: Path, **fields) -> Path:
    data = {"name": "t", "task": "logreg_breast_cancer", "budget": {"epochs": 2}, "optimizers": ["sgd", "adam"],
            "n_trials": 2, "report": False, "confirm": False, "curvature_diagnostics": False, **fields}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _hpo2(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh process: what a user's terminal shows, stderr included."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "150"}
    env.pop("HPO2_STUDIES", None)
    return subprocess.run(
        [sys.executable, "-m", "hpo2", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # a whole study or a server
def test_study_run_shows_progress_without_noise_and_a_rerun_has_nothing_to_do(tmp_path: Path) -> None:
    path = _study_file(tmp_path / "studies", task="digits_mlp", budget={"epochs": 1}, optimizers=["sgd", "sophia"])
    first = _hpo2(tmp_path, "study", "run", str(path))
    output = first.stdout + first.stderr
    assert first.returncode == 0, output
    for number, optimizer in ((0, "sgd"), (1, "sophia")):  # one line per finished trial, paper defaults first
        assert re.search(rf"^trial +{number} +{optimizer} +complete +[0-9.]+ +[0-9.]+s$", first.stdout, re.M), (
            first.stdout
        )
    assert re.search(r"\d+:\d\d elapsed, ETA \d+:\d\d", first.stdout), first.stdout
    assert "INFO" not in output and "Warning" not in output, output  # MLflow's table creation, torch's UserWarning
    best = re.search(r"^best: trial \d+ \w+ = (\S+)$", first.stdout, re.M)
    assert best is not None and len(re.sub(r"\D", "", best.group(1)).lstrip("0")) <= 5, first.stdout
    assert "objective: valid_metric (maximize)" in first.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'studies' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("t").experiment_id], "tags.`hpo2.role` = 'study'")[0]
    again = _hpo2(tmp_path, "study", "run", str(path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do: 2 of 2 trials done" in again.stdout
    assert "best: trial" in again.stdout  # the status, not a new run
    assert client.get_run(parent.info.run_id).info.end_time == parent.info.end_time  # the parent run was not reopened


def test_a_multi_objective_status_names_its_objectives_and_rounds_the_front(tmp_path: Path) -> None:
    path = _study_file(tmp_path, objective=["valid_loss", "grad_equivalents"], n_trials=3)
    StudyRunner(*load_study_config(path)).run()
    result = CliRunner().invoke(app, ["study", "status", str(path)])
    assert result.exit_code == 0, result.output
    assert "objective: valid_loss (minimize), grad_equivalents (minimize)" in result.output
    front = re.search(r"^(?:best|Pareto front \(\d+ trials\)): (.*)$", result.output, re.M)
    assert front is not None and re.search(r"= \d", front.group(1)) and not re.search(r"\d\.\d{6,}", front.group(1)), (
        result.output
    )
    assert optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't.optuna.db'}").directions == [
        optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MINIMIZE]


def test_a_live_display_that_is_piped_ends_its_last_line() -> None:
    out = io.StringIO()
    console = Console(file=out, width=40)  # a file: not a terminal
    table = Table()
    table.add_column("a")
    table.add_row("1")
    with live_display(console, table):
        pass
    console.print("next")
    assert out.getvalue().splitlines()[-2:] == ["└───┘", "next"]


@pytest.mark.slow  # a study and its report: 7 s
def test_the_final_report_says_when_it_starts_rendering_and_where_it_was_written(tmp_path: Path) -> None:
    """The runner tells its observer around the report (seconds to a minute of silence
    otherwise); the display prints one line before and one after, naming the file."""
    path = _study_file(tmp_path, report=True)
    out = io.StringIO()
    report_file = tmp_path / "t.report.html"
    display = StudyDisplay(Console(file=out, width=200), 2, None, report=report_file)
    progress = Progress()
    lines_while_rendering: list[str] = []

    def report(*args: object) -> None:  # the real report, without PNGs (no browser needed)
        lines_while_rendering.extend(out.getvalue().splitlines())
        functools.partial(render_study_report, out=report_file, png=False)(*args)

    progress.listeners.append(display.table)
    StudyRunner(*load_study_config(path), observer=progress, report=report).run()
    assert lines_while_rendering[-1] == f"rendering the report into the study's MLflow run and {report_file} ..."
    assert out.getvalue().splitlines()[-1] == f"wrote the report to the study's MLflow run and {report_file}"
    assert report_file.is_file() and progress.report == "done"
