"""The confirmation stage end to end: `hpo2 study run` confirms, and `study status`, `study best
--export`, the report and MLflow all name the confirmed configuration."""

from __future__ import annotations

import html
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.interface.report import StudyFigures, report_html
from hpo2.study.config import load_study_config
from hpo2.study.confirm import CONFIRM_OF_ATTR
from hpo2.study.results import target_text
from hpo2.study.trial_reporter import SEED_ATTR

# end to end: a whole study with its confirmation through the CLI (about 20 s on 2 loaded cores)
pytestmark = pytest.mark.slow


def test_a_study_confirms_its_winner_and_every_view_names_it(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "c", "task": "logreg_breast_cancer", "budget": {"epochs": 1}, "optimizers": ["sgd"], "n_trials": 2,
        "report": False, "curvature_diagnostics": False, "pruner": {"name": "none"},
        "confirm": {"top_k": 1, "seeds": 2},
    }))  # fmt: skip
    run = CliRunner().invoke(app, ["study", "run", str(path)])
    assert run.exit_code == 0, run.output
    storage = f"sqlite:///{tmp_path / 'c.optuna.db'}"
    search = optuna.load_study(study_name="c", storage=storage)
    confirm = optuna.load_study(study_name="c.confirm", storage=storage)
    assert len(search.trials) == 2  # the confirmation runs are not search trials
    runs = confirm.trials
    assert len(runs) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in runs)
    assert {t.user_attrs[SEED_ATTR] for t in runs} == {1_000_000, 1_000_001}
    winner = runs[0].user_attrs[CONFIRM_OF_ATTR]
    assert winner == search.best_trial.number and runs[0].params == search.best_trial.params

    status = CliRunner().invoke(app, ["study", "status", str(path)], terminal_width=200)
    assert status.exit_code == 0, status.output
    assert "confirmation: 2 of 2 runs done" in status.output and f"recommended: trial {winner} sgd" in status.output
    assert "costs to the target valid accuracy >= 0.96" in status.output

    exported_path = tmp_path / "best.yaml"
    best = CliRunner().invoke(app, ["study", "best", str(path), "--export", str(exported_path)])
    assert best.exit_code == 0, best.output
    exported = yaml.safe_load(exported_path.read_text())
    block = exported["study"]["confirmation"]
    assert block["mean"] == statistics.fmean(t.value for t in runs)
    assert block["std"] == statistics.stdev(t.value for t in runs)
    assert block["target"] == "valid accuracy >= 0.96" and block["seeds"] == [1_000_000, 1_000_001]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("c").experiment_id
    nested = client.search_runs([experiment], f"tags.`{CONFIRM_OF_ATTR}` = '{winner}'")
    assert len(nested) == 2 and all(r.info.status == "FINISHED" for r in nested)
    assert all(r.info.run_name.startswith("confirm-") for r in nested)
    assert all(r.data.tags["hpo2.target"] == "valid accuracy >= 0.96" for r in nested)
    parents = [r for r in client.search_runs([experiment], "tags.`hpo2.study` = 'c'")
               if "hpo2.trial_number" not in r.data.tags]  # fmt: skip
    tags = parents[0].data.tags
    assert tags["hpo2.recommended_trial"] == str(winner) and tags["hpo2.target"] == "valid accuracy >= 0.96"
    assert parents[0].data.metrics["confirmed_mean"] == block["mean"]

    config, _ = load_study_config(path)
    page = report_html(search, config, StudyFigures())
    assert "<h2>Confirmation</h2>" in page and html.escape(target_text(config)) in page
    assert "confirmation: 2 of 2 runs" in page

    deleted = CliRunner().invoke(app, ["study", "delete", str(path), "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert optuna.get_all_study_names(storage) == []  # the confirmation study goes with its study
    assert client.search_runs([experiment], "tags.`hpo2.study` = 'c.confirm'") == []
