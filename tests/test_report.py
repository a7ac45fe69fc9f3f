"""Study reports: figures with data, MLflow artifacts, the offline HTML page."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from hpo2.cli import app
from hpo2.report import study_figures
from hpo2.study.config import load_study_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
HAS_BROWSER = any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def run_study(tmp_path: Path, **fields) -> tuple[Path, MlflowClient]:
    data = {"name": "r", "task": "logreg_breast_cancer", "budget": {"epochs": 2}, "n_trials": 5,
            "optimizers": ["adam", "newton_cg"], "report": True, **fields}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 0, result.output
    return path, MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _parent(client: MlflowClient):
    exp = client.get_experiment_by_name("r")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`hpo2.role` = 'study'")
    return parent, client.search_runs([exp.experiment_id])


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _figure_points(page: str) -> list[int]:
    """Number of data points of each plotly figure embedded in the HTML."""
    counts = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page, flags=re.S):
        traces = json.loads(match.group(1))
        counts.append(sum(len(t.get("x") or t.get("y") or t.get("dimensions") or []) for t in traces))
    return counts


def test_single_objective_report_with_pruned_and_failed_trials(tmp_path):
    path, client = run_study(
        tmp_path,
        task="quadratic_deep",
        objective="valid_loss",
        optimizers=[{"name": "sgd", "fixed": {"lr": 5.0, "momentum": 0.0}},   # diverges -> pruned
                    {"name": "sophia", "fixed": {"estimator": "gnb"}},       # raises -> failed
                    "adam", "newton_cg"],
        n_trials=12,
        sampler={"name": "gp", "seed": 0, "n_startup_trials": 2},  # balanced: 3 trials per optimizer
        pruner={"name": "none"},
    )
    parent, runs = _parent(client)
    top = _artifacts(client, parent.info.run_id)
    assert {"report.html", "plots", "r.yaml"} <= top
    plots = _artifacts(client, parent.info.run_id, "plots")
    for stem in ("optimization_history", "learning_curves_wall_time", "learning_curves_grad_equivalents",
                 "parallel_coordinates_adam", "importances_adam"):
        assert f"plots/{stem}.html" in plots, stem
        if HAS_BROWSER:
            assert f"plots/{stem}.png" in plots, stem
    newton = next(r for r in runs if r.data.params.get("optimizer") == "newton_cg")
    assert "plots/curvature.html" in _artifacts(client, newton.info.run_id, "plots")

    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["study", "report", str(path), "--out", str(out), "--no-png"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "hpo2 study best r --export best.yaml &amp;&amp; hpo2 train --config best.yaml" in page
    assert "pruned" in page and "fail" in page
    points = _figure_points(page)
    assert len(points) >= 5 and all(n > 0 for n in points)  # no empty figure
    assert "plotly.js" in page.lower() or "Plotly" in page  # inlined: opens offline


def test_multi_objective_report_has_a_pareto_front(tmp_path):
    path, client = run_study(tmp_path, objective=["valid_loss", "grad_equivalents"], n_trials=4)
    config, file = load_study_config(path)
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r.optuna.db'}")
    figures = study_figures(study, config, client)
    assert "pareto_front" in figures
    assert sum(len(t.x or []) for t in figures["pareto_front"].data) == 4
    parent, _ = _parent(client)
    assert "plots/pareto_front.html" in _artifacts(client, parent.info.run_id, "plots")


def test_one_trial_study_still_renders(tmp_path):
    path, client = run_study(tmp_path, n_trials=1, optimizers=["adam"])
    parent, _ = _parent(client)
    assert "report.html" in _artifacts(client, parent.info.run_id)
    local = Path(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path)))
    page = local.read_text()
    assert "Best configuration per optimizer" in page and all(n > 0 for n in _figure_points(page))
