"""What a study shows a person: plotly figures, their MLflow artifacts, and one
self-contained HTML report.

Figures (:func:`study_figures`): optimization history; for each optimizer with at
least two finished trials, parallel coordinates and hyperparameter importances
(fANOVA, Optuna's default evaluator) over its own settings; importances across the
whole study; the Pareto front for multi-objective studies; the learning curves of
each optimizer's best trial against wall time and against gradient-equivalents
(read back from MLflow); sharpness against the validation metric over trials,
coloured by optimizer (:func:`sharpness_figure`).  :func:`trial_curvature_figure` plots one trial's
damping, CG iterations and top Hessian eigenvalue over steps.

Each figure is logged to the study's parent MLflow run as HTML (plotly.js from
its CDN) and PNG (kaleido, with Debian's ``chromium``; skipped with a note when no
browser is installed); the report inlines plotly.js once, so it opens offline.
"""

from __future__ import annotations

import html
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from hpo2.study.config import StudyConfig
from hpo2.study.results import best_per_optimizer, best_trials, export_config, mlflow_run_id, state_counts
from hpo2.study.space import OPTIMIZER_PARAM


def _target(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    if len(study.directions) == 1:
        return {}
    return {"target": lambda t: t.values[0], "target_name": config.objective[0].metric}


def _optimizer_params(study: optuna.Study, optimizer: str) -> list[str]:
    names: list[str] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.params.get(OPTIMIZER_PARAM) == optimizer:
            names += [k for k in t.params if k.startswith(optimizer + ".") and k not in names]
    return names


def _metric_curve(client: MlflowClient, run_id: str, x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    xs = {m.step: m.value for m in client.get_metric_history(run_id, x_key)}
    ys = {m.step: m.value for m in client.get_metric_history(run_id, y_key)}
    steps = sorted(set(xs) & set(ys))
    return [xs[s] for s in steps], [ys[s] for s in steps]


def learning_curves(study: optuna.Study, client: MlflowClient, x_key: str, title: str) -> go.Figure:
    """Validation metric of each optimizer's best trial against ``x_key``."""
    fig = go.Figure()
    for name, trial in sorted(best_per_optimizer(study).items()):
        run_id = mlflow_run_id(study, trial)
        if run_id is None:
            continue
        x, y = _metric_curve(client, run_id, x_key, "valid_metric")
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{name} (trial {trial.number})"))
    fig.update_layout(title=title, xaxis_title=x_key.replace("_", " "), yaxis_title="validation metric")
    return fig


def sharpness_figure(study: optuna.Study) -> go.Figure | None:
    """m-sharpness against the validation metric at each trial's last flatness
    measurement (finished and pruned trials), one colour per optimizer; hover shows
    the top Hessian eigenvalue and the generalization gap.  None without data."""
    points: dict[str, list[tuple[float, float, str]]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        flat = t.user_attrs.get("hpo2.flatness") or {}
        x, y = flat.get("m_sharpness"), flat.get("valid_metric")
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        label = (
            f"trial {t.number}<br>top eigenvalue {flat.get('top_eigenvalue', math.nan):.3g}"
            f"<br>gap {flat.get('generalization_gap', math.nan):.3g}"
        )
        points.setdefault(str(t.params.get(OPTIMIZER_PARAM)), []).append((x, y, label))
    if not points:
        return None
    fig = go.Figure()
    for name, rows in sorted(points.items()):
        xs, ys, labels = zip(*rows)
        fig.add_trace(go.Scatter(x=xs, y=ys, text=labels, mode="markers", name=name, hovertemplate="%{text}"))
    fig.update_layout(
        title="Sharpness against validation metric (one point per trial)",
        xaxis_title="m-sharpness (rho 0.05, training sample)",
        yaxis_title="validation metric",
    )
    return fig


def study_figures(study: optuna.Study, config: StudyConfig, client: MlflowClient) -> dict[str, go.Figure]:
    """Every study-level figure that the trials so far can support, by file stem."""
    from optuna import visualization as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target = _target(study, config)
    figures: dict[str, go.Figure] = {}
    if not complete:
        return figures
    figures["optimization_history"] = vis.plot_optimization_history(study, **target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(complete) >= 2:
            try:
                figures["importances_all"] = vis.plot_param_importances(study, **target)
            except (RuntimeError, ValueError, ZeroDivisionError):
                pass  # e.g. every value equal: importances are undefined
        for name in sorted({t.params[OPTIMIZER_PARAM] for t in complete}):
            params = _optimizer_params(study, name)
            mine = [t for t in complete if t.params.get(OPTIMIZER_PARAM) == name]
            if len(mine) < 2 or not params:
                continue
            figures[f"parallel_coordinates_{name}"] = vis.plot_parallel_coordinate(study, params=params, **target)
            try:
                figures[f"importances_{name}"] = vis.plot_param_importances(study, params=params, **target)
            except (RuntimeError, ValueError, ZeroDivisionError):
                pass
    if len(study.directions) > 1:
        figures["pareto_front"] = vis.plot_pareto_front(study, target_names=[o.metric for o in config.objective])
    sharpness = sharpness_figure(study)
    if sharpness is not None:
        figures["sharpness_vs_validation"] = sharpness
    figures["learning_curves_wall_time"] = learning_curves(
        study, client, "wall_seconds", "Best trial of each optimizer: validation metric against wall time"
    )
    figures["learning_curves_grad_equivalents"] = learning_curves(
        study,
        client,
        "grad_equivalents",
        "Best trial of each optimizer: validation metric against gradient-equivalents",
    )
    return figures


def trial_curvature_figure(client: MlflowClient, run_id: str, title: str) -> go.Figure | None:
    """Damping, CG iterations and top Hessian eigenvalue over steps for one trial."""
    series = {
        "damping": client.get_metric_history(run_id, "diag.damping"),
        "CG iterations": client.get_metric_history(run_id, "diag.cg_iters"),
        "top Hessian eigenvalue": client.get_metric_history(run_id, "curvature.top_eigenvalue"),
    }
    present = {k: v for k, v in series.items() if v}
    if not present:
        return None
    fig = make_subplots(rows=len(present), cols=1, shared_xaxes=True, subplot_titles=list(present))
    for row, (label, history) in enumerate(present.items(), start=1):
        fig.add_trace(
            go.Scatter(x=[m.step for m in history], y=[m.value for m in history], mode="lines+markers", name=label),
            row=row,
            col=1,
        )
    fig.update_layout(title=title, showlegend=False, height=250 * len(present))
    fig.update_xaxes(title_text="step", row=len(present), col=1)
    return fig


def export_pngs(figures: list[go.Figure], paths: list[Path]) -> bool:
    """Render PNGs in one kaleido session; False (with a warning) when no browser is there."""
    try:
        pio.write_images(figures, paths)
        return True
    except Exception as exc:  # kaleido needs Chrome/Chromium: the HTML still stands
        warnings.warn(f"PNG export skipped ({type(exc).__name__}: {exc}); install chromium for PNGs", stacklevel=2)
        return False


def write_figures(figures: dict[str, go.Figure], folder: Path, png: bool = True) -> list[Path]:
    """Write each figure as HTML (and PNG when a browser for kaleido is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figures.items():
        path = folder / f"{stem}.html"
        fig.write_html(path, include_plotlyjs="cdn")
        written.append(path)
    pngs = [folder / f"{stem}.png" for stem in figures]
    if png and figures and export_pngs(list(figures.values()), pngs):
        written += pngs
    return written


def _summary_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for name, t in sorted(best_per_optimizer(study).items(), key=lambda kv: kv[0]):
        rows.append({
            "optimizer": name,
            "trial": t.number,
            "value": ", ".join(f"{v:.5g}" for v in t.values),
            "time to target (s)": _fmt(t.user_attrs.get("hpo2.time_to_target_seconds")),
            "grad-eq to target": _fmt(t.user_attrs.get("hpo2.time_to_target_grad_equivalents")),
            "grad-eq total": _fmt(t.user_attrs.get("hpo2.grad_equivalents")),
            "settings": ", ".join(
                f"{k.split('.', 1)[1]}={_fmt(v)}" for k, v in t.params.items() if k != OPTIMIZER_PARAM
            ),
        })  # fmt: skip
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "not reached"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def report_html(study: optuna.Study, config: StudyConfig, figures: dict[str, go.Figure]) -> str:
    """One self-contained page: summary, best config and command, every figure."""
    counts = state_counts(study)
    best: list[FrozenTrial] = best_trials(study)
    rows = _summary_rows(study)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {"optimizer": ""}))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    exported = yaml.safe_dump(export_config(config, best[0]), sort_keys=False) if best else "no complete trial yet"
    command = f"hpo2 study best {config.name} --export best.yaml && hpo2 train --config best.yaml"
    plots = []
    for i, (stem, fig) in enumerate(figures.items()):
        plots.append(
            f"<h2>{html.escape(stem.replace('_', ' '))}</h2>"
            + fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{stem}")
        )
    states = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    objectives = ", ".join(f"{o.metric} ({d.name.lower()})" for o, d in zip(config.objective, study.directions))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hpo2 study {html.escape(config.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>Study {html.escape(config.name)}</h1>
<p>Task <b>{html.escape(config.task.label)}</b>, sampler <b>{html.escape(config.sampler.name)}</b>,
objective {html.escape(objectives)};
trials: {html.escape(states)}.</p>
<h2>Best configuration per optimizer</h2><table><tr>{head}</tr>{body}</table>
<h2>Reuse the winner</h2><pre>{html.escape(command)}</pre><pre>{html.escape(exported)}</pre>
{"".join(plots)}
</body></html>"""


def render_study_report(
    study: optuna.Study,
    config: StudyConfig,
    tracking_uri: str,
    parent_run_id: str,
    out: Path | None = None,
    png: bool = True,
) -> str:
    """Render the figures and the report, log them to the parent run (and each
    trial's curvature plot to its nested run), write the report to ``out`` if
    given; return the report's HTML."""
    client = MlflowClient(tracking_uri=tracking_uri)
    figures = study_figures(study, config, client)
    page = report_html(study, config, figures)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in write_figures(figures, folder / "plots", png):
            client.log_artifact(parent_run_id, str(path), artifact_path="plots")
        (folder / "report.html").write_text(page)
        client.log_artifact(parent_run_id, str(folder / "report.html"))
        trial_figures: dict[str, go.Figure] = {}
        for t in study.get_trials(deepcopy=False):
            run_id = mlflow_run_id(study, t)
            fig = trial_curvature_figure(client, run_id, f"trial {t.number}: curvature") if run_id else None
            if run_id and fig is not None:
                trial_figures[run_id] = fig
        for run_id, fig in trial_figures.items():
            for path in write_figures({"curvature": fig}, folder / "trials" / run_id, png=False):
                client.log_artifact(run_id, str(path), artifact_path="plots")
        pngs = [folder / "trials" / run_id / "curvature.png" for run_id in trial_figures]
        if png and trial_figures and export_pngs(list(trial_figures.values()), pngs):
            for run_id, path in zip(trial_figures, pngs):
                client.log_artifact(run_id, str(path), artifact_path="plots")
    if out is not None:
        out.write_text(page)
    return page
