"""Suites end to end: two tiny tasks, real sqlite storage and MLflow, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.tasks import build_task

optuna.logging.set_verbosity(optuna.logging.WARNING)
TARGETS = {"digits_mlp": 0.6, "logreg_breast_cancer": 0.9}


def write_suite(tmp_path: Path, **fields) -> Path:
    data = {
        "name": "s",
        "tasks": [{"task": "digits_mlp", "budget": {"epochs": 1}, "target": TARGETS["digits_mlp"]},
                  {"task": "logreg_breast_cancer", "budget": {"epochs": 6}, "target": TARGETS["logreg_breast_cancer"]}],
        "optimizers": ["sgd", "adam", "lbfgs"],
        "study": {"n_trials": 6, "sampler": {"name": "random", "seed": 0}, "report": False, "confirm": False,
                  "curvature_diagnostics": False, "pruner": {"name": "none"}},
        **fields,
    }  # fmt: skip
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_task_target_setting_replaces_the_tasks_own():
    assert build_task("digits_mlp").target == 0.95
    assert build_task("digits_mlp", {"target": 0.5}).target == 0.5


def first_crossing(client: MlflowClient, run_id: str, target: float) -> float:
    """Gradient-equivalents at the first logged evaluation at or above ``target`` (read from MLflow)."""
    metric = {m.step: m.value for m in client.get_metric_history(run_id, "valid_metric")}
    cost = {m.step: m.value for m in client.get_metric_history(run_id, "grad_equivalents")}
    return next((cost[s] for s in sorted(metric) if metric[s] >= target), math.inf)


@pytest.mark.slow
def test_suite_runs_a_study_per_task_and_writes_the_profile(tmp_path):
    path = write_suite(tmp_path)
    result = run_cli("suite", "run", str(path), "--no-png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.suite.html").is_file() and (tmp_path / "s.suite.md").is_file()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s")
    runs = client.search_runs([exp.experiment_id])
    suite_run = next(r for r in runs if r.data.tags.get("hpo2.role") == "suite")
    assert suite_run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(suite_run.info.run_id)} >= {
        "plots", "suite_report.html", "suite_report.md", "performance_profile.json"}
    study_runs = [r for r in runs if r.data.tags.get("hpo2.role") == "study"]
    assert sorted(r.data.tags["hpo2.study"] for r in study_runs) == ["s.digits_mlp", "s.logreg_breast_cancer"]
    assert all(r.data.tags["mlflow.parentRunId"] == suite_run.info.run_id for r in study_runs)

    # The profile recomputed by hand from the trials, each trial's time checked against its learning curve.
    storage = f"sqlite:///{tmp_path / 's.optuna.db'}"
    times: dict[str, dict[str, float]] = {o: {} for o in ("sgd", "adam", "lbfgs")}
    for task, target in TARGETS.items():
        study = optuna.load_study(study_name=f"s.{task}", storage=storage)
        assert len(study.trials) == 6
        for o in times:
            times[o][task] = math.inf
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
            recorded = t.user_attrs["hpo2.time_to_target_grad_equivalents"]
            crossing = first_crossing(client, t.user_attrs["hpo2.mlflow_run_id"], target)
            assert (recorded if recorded is not None else math.inf) == pytest.approx(crossing)
            times[t.params["optimizer"]][task] = min(times[t.params["optimizer"]][task], crossing)
    assert any(math.isfinite(t) for row in times.values() for t in row.values())
    metrics = suite_run.data.metrics
    for o, row in times.items():
        ratios = [row[p] / min(times[q][p] for q in times) if math.isfinite(row[p]) else math.inf for p in TARGETS]
        for tau in (1, 1.5, 2, 4):
            assert metrics[f"profile.{o}.rho_tau_{tau:g}"] == pytest.approx(sum(r <= tau for r in ratios) / 2)
        assert metrics[f"profile.{o}.wins"] == sum(r == 1 for r in ratios)
        for p in TARGETS:
            if math.isfinite(row[p]):
                assert metrics[f"time_to_target.{p}.{o}"] == pytest.approx(row[p])

    # Rerun: both studies are done; the report is rewritten from the same trials.
    again = run_cli("suite", "run", str(path), "--no-png", "--n-trials", "6")
    assert again.exit_code == 0 and again.output.count("is done, skipped") == 2, again.output
    report = run_cli("suite", "report", str(path), "--no-png")
    assert report.exit_code == 0, report.output

    # A changed target is refused: the recorded times are for the old one.
    changed = write_suite(tmp_path, tasks=[{"task": "digits_mlp", "budget": {"epochs": 1}, "target": 0.7}])
    refused = run_cli("suite", "run", str(changed), "--no-png")
    assert refused.exit_code == 2 and "restore the task's target" in refused.output, refused.output


@pytest.mark.parametrize(("fields", "message"), [
    ({"study": {"n_trails": 3}}, "study: unknown study setting 'n_trails' (did you mean 'n_trials'?)"),
    ({"study": {"budget": {"epochs": 1}}}, "study: 'budget' is set by the suite itself; give it in tasks[].budget"),
    ({"tasks": [{"task": "digits_mlp", "budget": {"epochs": 1}}] * 2}, "give each a distinct label"),
    ({"tasks": [{"task": "digits", "budget": {"epochs": 1}}]}, "tasks.0.task.name: 'digits' is not a known task"),
    ({"tasks": [{"task": "digits_mlp", "budget": {"epochs": 1}, "target": ".nan"}]}, "tasks.0.target"),
    ({"optimizers_from": "no_such_study"}, "optimizers_from = 'no_such_study': no study named"),
    ({"measure": "epochs"}, "measure = 'epochs'"),
])  # fmt: skip
def test_bad_suite_file_names_the_field_and_exits_2(tmp_path, fields, message):
    path = write_suite(tmp_path, **fields)
    if fields.get("optimizers_from"):
        data = yaml.safe_load(path.read_text())
        del data["optimizers"]
        path.write_text(yaml.safe_dump(data))
    result = run_cli("suite", "run", str(path))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_shipped_suite_file_is_valid():
    from hpo2.study.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[2] / "studies" / "suite_small.yaml")
    assert suite.labels == ["digits_mlp", "logreg_breast_cancer"]
    assert [s.name for s in suite.studies] == ["suite_small.digits_mlp", "suite_small.logreg_breast_cancer"]
    assert suite.studies[0].task.settings["target"] == 0.9


def test_the_logged_copy_of_a_suite_or_study_file_masks_nested_url_passwords():
    from hpo2.common.redact import sanitized_study_text

    url = "postgresql://hpo2:s3cret-pw@db.example/optuna"
    text = sanitized_study_text({"name": "s", "storage": url, "study": {"storage": url, "tracking_uri": url},
                                 "warm_start": {"storage": url}, "tasks": [{"task": "digits_mlp"}]})  # fmt: skip
    assert "s3cret-pw" not in text and text.count("hpo2:***@db.example") == 4
    assert "digits_mlp" in text


def test_report_of_a_suite_never_run_says_so_and_creates_nothing(tmp_path):
    path = write_suite(tmp_path)
    result = run_cli("suite", "report", str(path))
    assert result.exit_code == 2 and "no task's study has run yet" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.yaml"]


@pytest.mark.slow
def test_an_interrupted_suite_resumes_where_it_stopped(tmp_path):
    from hpo2.study.recovery import StudyInterrupted
    from hpo2.study.suite import load_suite, run_suite

    path = write_suite(tmp_path, optimizers=["sgd", "adam"], study={"n_trials": 2, "report": False, "confirm": False,
                                                                    "curvature_diagnostics": False})  # fmt: skip
    suite = load_suite(path)

    def stop_after_the_first(runner) -> None:
        runner.run()
        raise StudyInterrupted([])

    with pytest.raises(StudyInterrupted):
        run_suite(suite, stop_after_the_first)
    client = MlflowClient(suite.tracking_uri)
    suite_run = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.`hpo2.role` = 'suite'")[0]
    assert suite_run.info.status == "KILLED"

    lines: list[str] = []
    run_id = run_suite(suite, lambda runner: runner.run(), lines.append)
    assert run_id == suite_run.info.run_id  # the same suite run, resumed
    assert "is done, skipped" in lines[0] and "logreg_breast_cancer" in lines[1]
    storage = f"sqlite:///{tmp_path / 's.optuna.db'}"
    assert [len(optuna.load_study(study_name=f"s.{t}", storage=storage).trials) for t in TARGETS] == [2, 2]
