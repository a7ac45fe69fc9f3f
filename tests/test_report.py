"""Study reports: figures with data, MLflow artifacts, the offline HTML page."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial
from typer.testing import CliRunner

from hpo2.interface import report
from hpo2.interface.cli import app
from hpo2.interface.report import MIN_IMPORTANCE_TRIALS, _summary_rows, export_pngs, study_figures
from hpo2.study.config import load_study_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
HAS_BROWSER = any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def _study_file(folder: Path, **fields) -> Path:
    data = {"name": "r", "task": "logreg_breast_cancer", "budget": {"epochs": 2}, "n_trials": 5,
            "optimizers": ["adam", "newton_cg"], "report": True, "confirm": False, **fields}
    path = folder / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_study(tmp_path: Path, **fields) -> tuple[Path, MlflowClient]:
    path = _study_file(tmp_path, **fields)
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 0, result.output
    return path, MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _parent(client: MlflowClient):
    exp = client.get_experiment_by_name("r")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`hpo2.role` = 'study'")
    return parent, client.search_runs([exp.experiment_id])


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def _figures(page: str) -> dict[str, list[dict]]:
    """The traces of each plotly figure embedded in the HTML, by its div id."""
    found = {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*(\[.*?\]),\s*\{', page, flags=re.S):
        found[match.group(1)] = json.loads(match.group(2))
    return found


def _figure_points(page: str) -> list[int]:
    """Number of data points of each plotly figure embedded in the HTML."""
    return [sum(len(t.get("x") or t.get("y") or t.get("dimensions") or []) for t in traces)
            for traces in _figures(page).values()]  # fmt: skip


def _trial_lines(traces: list[dict]) -> list[list[tuple[str, str]]]:
    """Each trial's line of an Optuna parallel-coordinates figure: its (axis, value shown) pairs."""
    return [[(label, value) for label, value in t["customdata"]] for t in traces
            if t.get("mode") == "lines" and t.get("customdata") is not None]  # fmt: skip


#: a script or stylesheet fetched from elsewhere: blank without internet
EXTERNAL = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


def _summary_table(page: str) -> list[tuple[str, list[str]]]:
    """(row class, cells) of the best-configuration table."""
    table = page.split("<h2>Best configuration per optimizer</h2>", 1)[1].split("</table>", 1)[0]
    return [(m.group(1) or "", re.findall(r"<td>(.*?)</td>", m.group(2)))
            for m in re.finditer(r'<tr(?: class="(\w+)")?>(.*?)</tr>', table) if "<td>" in m.group(2)]  # fmt: skip


@pytest.mark.slow  # a whole study and its report (plotly.js embedded in each plot): ~10-25 s
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
    logged = Path(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path / "logged")))
    assert (tmp_path / "r.report.html").read_text() == logged.read_text()  # `study run` writes it beside the study
    plots = _artifacts(client, parent.info.run_id, "plots")
    for stem in ("optimization_history", "learning_curves_wall_time", "learning_curves_grad_equivalents",
                 "parallel_coordinates_adam", "curvature"):
        assert f"plots/{stem}.html" in plots, stem
        if HAS_BROWSER:
            assert f"plots/{stem}.png" in plots, stem
    assert "plots/importances_adam.html" not in plots  # 3 trials: noise, not drawn
    newton = next(r for r in runs if r.data.params.get("optimizer") == "newton_cg")
    trial_plots = _artifacts(client, newton.info.run_id, "plots") if HAS_BROWSER else set()
    assert trial_plots == ({"plots/curvature.png"} if HAS_BROWSER else set())  # its curvature: in the study's

    for artifact in [*(a for a in plots if a.endswith(".html")), "report.html"]:  # every page opens offline
        local = Path(client.download_artifacts(parent.info.run_id, artifact, str(tmp_path / "downloaded")))
        text = local.read_text()
        assert EXTERNAL.search(text) is None and "Plotly.newPlot" in text, artifact

    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["study", "report", str(path), "--out", str(out), "--no-png"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert EXTERNAL.search(page) is None
    assert "hpo2 study best r --export best.yaml &amp;&amp; hpo2 train --config best.yaml" in page
    assert "pruned" in page and "fail" in page
    points = _figure_points(page)
    assert len(points) >= 5 and all(n > 0 for n in points)  # no empty figure
    assert "Target (time-to-target): <b>valid loss &lt;= 90</b>" in page

    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r.optuna.db'}")
    adam = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.params["optimizer"] == "adam"]
    lines = _trial_lines(_figures(page)["fig-parallel_coordinates_adam"])
    assert len(lines) == len(adam)  # adam's trials only
    assert all(value != "None" for line in lines for _, value in line)  # no line dives to another's None
    assert "not drawn yet for the whole study (" in page and f"adam ({len(adam)} so far)" in page  # too few

    rows = _summary_table(page)  # best first (valid_loss: the least), the winner marked
    values = [float(cells[2]) for _, cells in rows]
    assert values == sorted(values) and len(rows) >= 2
    winner_class, winner = rows[0]
    assert winner_class == "winner" and winner[0].endswith(" (best)") and winner[1] == str(study.best_trial.number)
    assert all(cls == "" for cls, _ in rows[1:])
    assert not any("not reached" in cells[-1] for _, cells in rows)  # settings: None is None


def _trial(optimizer: str, value: float, **settings: float | int | None) -> FrozenTrial:
    params = {"optimizer": optimizer, **{f"{optimizer}.{k}": v for k, v in settings.items()}}
    distributions = {"optimizer": CategoricalDistribution(["adam", "sgd", "newton_cg"]),
                     **{f"{optimizer}.{k}": CategoricalDistribution([None, 512]) if v is None or isinstance(v, int)
                        else FloatDistribution(1e-4, 1.0, log=True) for k, v in settings.items()}}  # fmt: skip
    return create_trial(params=params, distributions=distributions, value=value)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


def test_importances_need_ten_trials_and_each_optimizers_plot_has_only_its_trials(client) -> None:
    study = optuna.create_study(study_name="synthetic")
    rng = random.Random(0)
    for _ in range(MIN_IMPORTANCE_TRIALS):
        lr, beta = rng.uniform(1e-3, 1e-1), rng.uniform(1e-3, 0.5)
        study.add_trial(_trial("adam", 10 * lr + beta**2, lr=lr, beta=beta))
    for lr in (0.01, 0.1, 0.5):
        study.add_trial(_trial("sgd", 1 - lr, lr=lr))
    config, _ = load_study_config(_study_file(Path(client.tracking_uri.removeprefix("sqlite:///")).parent))
    drawn = study_figures(study, config, client)
    assert {"importances_adam", "importances_all", "parallel_coordinates_adam",
            "parallel_coordinates_sgd"} <= set(drawn.figures)  # fmt: skip
    assert "importances_sgd" not in drawn.figures
    assert drawn.notes == [f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials (fewer "
                           "show noise as a result); not drawn yet for sgd (3 so far)."]  # fmt: skip
    lines = _trial_lines([trace.to_plotly_json() for trace in drawn.figures["parallel_coordinates_sgd"].data])
    assert [[label for label, _ in line] for line in lines] == [["Objective Value", "sgd.lr"]] * 3
    assert sorted(float(line[1][1]) for line in lines) == pytest.approx([0.01, 0.1, 0.5])  # no other's None


def test_the_best_configuration_table_shows_an_unset_setting_as_none(client) -> None:
    study = optuna.create_study(study_name="none", direction="maximize")
    study.add_trial(_trial("newton_cg", 0.9, batch_size=None, lr=0.123456))
    study.add_trial(_trial("adam", 0.95, lr=0.01))
    rows = _summary_rows(study)
    assert [r["optimizer"] for r in rows] == ["adam", "newton_cg"]  # best first (maximize)
    assert rows[1]["settings"] == "batch_size=None, lr=0.123"  # as `hpo2 study status` shows it


def test_a_tie_goes_to_the_earlier_trial_as_the_studys_best_trial() -> None:
    study = optuna.create_study(study_name="tie", direction="maximize")
    for optimizer, value in (("adam", 0.5), ("sgd", 0.9), ("adam", 0.9)):
        study.add_trial(_trial(optimizer, value, lr=0.01))
    rows = _summary_rows(study)
    assert [(r["optimizer"], r["trial"]) for r in rows] == [("sgd", 1), ("adam", 2)]
    assert rows[0]["trial"] == study.best_trial.number  # the row marked the winner is the exported one


def test_no_browser_is_said_once_per_process_with_the_offline_way(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-browser"))  # kaleido finds no Chrome
    monkeypatch.setattr(report._Kaleido, "no_browser", False)  # restored after the test
    figure = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    with caplog.at_level(logging.WARNING, logger="hpo2.interface.report"):
        assert not export_pngs([figure], [tmp_path / "a.png"])
        assert not export_pngs([figure], [tmp_path / "b.png"])
    (record,) = caplog.records
    assert "apt install chromium" in record.getMessage() and "plotly_get_chrome" not in record.getMessage()
    assert not (tmp_path / "a.png").exists()


@pytest.mark.slow  # a whole study and its report (plotly.js embedded in each plot): ~10-25 s
def test_multi_objective_report_has_a_pareto_front(tmp_path):
    path, client = run_study(tmp_path, objective=["valid_loss", "grad_equivalents"], n_trials=4)
    config, file = load_study_config(path)
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 'r.optuna.db'}")
    figures = study_figures(study, config, client).figures
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
