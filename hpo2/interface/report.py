"""What a study shows a person: plotly figures, their MLflow artifacts, and one
self-contained HTML report.

Figures (:func:`study_figures`): optimization history; for each optimizer with at
least two complete trials, parallel coordinates over its own settings, drawn from
its own trials only; hyperparameter importances (fANOVA, Optuna's default
evaluator) per optimizer and across the study, each only from
:data:`MIN_IMPORTANCE_TRIALS` complete trials on (fewer give noise that looks like
a result; the report says which were left out); the Pareto front for
multi-objective studies; the learning curves of each optimizer's best trial
against wall time and against gradient-equivalents (read back from MLflow);
sharpness against the validation metric over trials, coloured by optimizer
(:func:`sharpness_figure`); damping, CG iterations and the top Hessian eigenvalue
over steps, one line per trial (:func:`curvature_figure`).

Each figure is logged to the study's parent MLflow run as HTML and PNG (kaleido,
with Debian's ``chromium``; skipped, with one note per process, when no browser
is installed).  Every HTML file carries plotly.js inside it (about 4.7 MB), so it
opens offline and in MLflow's artifact viewer, which shows one file in a sandboxed
frame where a script beside it cannot load; the report inlines plotly.js once.
The curvature of every trial is one figure of the study (a legend entry per
trial) rather than a file in each trial's run, so the plots of a study cost a
dozen copies of plotly.js, not one per trial (each trial's run keeps a PNG when
a browser is there, and MLflow charts its ``diag.*`` metrics itself).
"""

from __future__ import annotations

import html
import logging
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from hpo2.interface.confirmation import confirmation_lines, confirmation_rows, confirmation_title
from hpo2.study.config import StudyConfig
from hpo2.study.confirm import Confirmation, confirmation_of, export_block, recommended_trial
from hpo2.study.results import (
    best_per_optimizer,
    export_config,
    mlflow_run_id,
    ranked,
    settings_text,
    state_counts,
    target_text,
)
from hpo2.study.space import OPTIMIZER_PARAM

#: complete trials an importance plot needs: fANOVA on fewer shows noise as a result
MIN_IMPORTANCE_TRIALS = 10
#: the (label, MLflow metric) rows of the curvature figure
CURVATURE_METRICS = (("damping", "diag.damping"), ("CG iterations", "diag.cg_iters"),
                     ("top Hessian eigenvalue", "curvature.top_eigenvalue"))  # fmt: skip
logger = logging.getLogger(__name__)


def _target(study: optuna.Study, config: StudyConfig) -> dict[str, Any]:
    if len(study.directions) == 1:
        return {}
    return {"target": lambda t: t.values[0], "target_name": config.objective[0].metric}


def _optimizer_params(trials: Sequence[FrozenTrial], optimizer: str) -> list[str]:
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k.startswith(optimizer + ".") and k not in names]
    return names


def _study_of(study: optuna.Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study holding only ``trials`` (Optuna's plots draw every trial of the
    study they are given: another optimizer's trial would be a line at ``None``)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        own = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    own.add_trials(trials)
    return own


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


@dataclass
class StudyFigures:
    """The figures the trials so far support, by file stem, and a sentence for each
    kind left out and why."""

    figures: dict[str, go.Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def study_figures(study: optuna.Study, config: StudyConfig, client: MlflowClient) -> StudyFigures:
    """Every study-level figure that the trials so far can support (module docstring)."""
    from optuna import visualization as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    target = _target(study, config)
    out = StudyFigures()
    if not complete:
        out.notes.append("No complete trial yet: nothing to plot.")
        return out
    figures = out.figures
    figures["optimization_history"] = vis.plot_optimization_history(study, **target)
    too_few: list[str] = []  # "adam (3 so far)": importances not drawn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(complete) >= MIN_IMPORTANCE_TRIALS:
            _add_importances(figures, "importances_all", study, None, target)
        else:
            too_few.append(f"the whole study ({len(complete)} so far)")
        for name in sorted({t.params[OPTIMIZER_PARAM] for t in complete}):
            mine = [t for t in complete if t.params.get(OPTIMIZER_PARAM) == name]
            params = _optimizer_params(mine, name)
            if not params:
                continue
            own = _study_of(study, mine)
            if len(mine) >= 2:
                figures[f"parallel_coordinates_{name}"] = vis.plot_parallel_coordinate(own, params=params, **target)
            if len(mine) >= MIN_IMPORTANCE_TRIALS:
                _add_importances(figures, f"importances_{name}", own, params, target)
            else:
                too_few.append(f"{name} ({len(mine)} so far)")
    if too_few:
        out.notes.append(f"Parameter importances need at least {MIN_IMPORTANCE_TRIALS} complete trials (fewer show "
                         f"noise as a result); not drawn yet for {', '.join(too_few)}.")  # fmt: skip
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
    curvature = curvature_figure(study, client)
    if curvature is not None:
        figures["curvature"] = curvature
    return out


def _add_importances(figures: dict[str, go.Figure], stem: str, study: optuna.Study, params: list[str] | None,
                     target: dict[str, Any]) -> None:  # fmt: skip
    from optuna import visualization as vis

    try:
        figures[stem] = vis.plot_param_importances(study, params=params, **target)
    except (RuntimeError, ValueError, ZeroDivisionError):
        pass  # e.g. every value equal: importances are undefined


def _histories(client: MlflowClient, run_id: str) -> dict[str, list[Any]]:
    """The curvature metrics (:data:`CURVATURE_METRICS`) the run logged, by label."""
    found = {label: client.get_metric_history(run_id, key) for label, key in CURVATURE_METRICS}
    return {label: history for label, history in found.items() if history}


def curvature_figure(study: optuna.Study, client: MlflowClient) -> go.Figure | None:
    """Damping, CG iterations and top Hessian eigenvalue over steps, one line per trial
    that logged them; each optimizer's best trial is shown, the others are a click on
    their legend entry away.  None when no trial logged any."""
    best = {t.number for t in best_per_optimizer(study).values()}
    series = []
    for t in study.get_trials(deepcopy=False):
        run_id = mlflow_run_id(study, t)
        histories = _histories(client, run_id) if run_id else {}
        if histories:
            series.append((t, histories))
    present = [label for label, _ in CURVATURE_METRICS if any(label in h for _, h in series)]
    if not present:
        return None
    fig = make_subplots(rows=len(present), cols=1, shared_xaxes=True, subplot_titles=present)
    for t, histories in series:
        name = f"trial {t.number} ({t.params.get(OPTIMIZER_PARAM)})"
        for row, label in enumerate(present, start=1):
            if label in histories:
                fig.add_trace(go.Scatter(
                    x=[m.step for m in histories[label]], y=[m.value for m in histories[label]], mode="lines",
                    name=name, legendgroup=name, showlegend=label == next(iter(histories)),
                    visible=True if t.number in best else "legendonly"), row=row, col=1)  # fmt: skip
    fig.update_layout(title="Curvature over steps (each optimizer's best trial; click the legend for others)",
                      height=250 * len(present) + 100)  # fmt: skip
    fig.update_xaxes(title_text="step", row=len(present), col=1)
    return fig


def trial_curvature_figure(client: MlflowClient, run_id: str, title: str) -> go.Figure | None:
    """Damping, CG iterations and top Hessian eigenvalue over steps for one trial (its PNG)."""
    present = _histories(client, run_id)
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


class _Kaleido:
    """Whether kaleido found no browser in this process: PNGs are then not tried again,
    and the user was told once."""

    no_browser = False


def _browser_missing(exc: BaseException) -> bool:
    """Plotly turns kaleido's ``ChromeNotFoundError`` into a RuntimeError that suggests a download."""
    return any(type(e).__name__ == "ChromeNotFoundError" for e in (exc, exc.__cause__, exc.__context__))


def export_pngs(figures: list[go.Figure], paths: list[Path]) -> bool:
    """Render PNGs in one kaleido session; False when it cannot.  Without a browser
    the user is told once per process, with the offline way to get one."""
    if _Kaleido.no_browser:
        return False
    try:
        pio.write_images(figures, paths)
        return True
    except Exception as exc:  # kaleido needs Chrome/Chromium: the HTML still stands
        if _browser_missing(exc):
            _Kaleido.no_browser = True
            logger.warning("PNG copies skipped: kaleido finds no Chrome or Chromium; Debian's chromium package "
                           "(`apt install chromium`) provides one that works offline; the HTML plots are written")
        else:
            logger.warning("PNG copies skipped (%s: %s); the HTML plots are written", type(exc).__name__, exc)
        return False


def write_figures(figures: dict[str, go.Figure], folder: Path, png: bool = True) -> list[Path]:
    """Write each figure as HTML with plotly.js inside it (module docstring), and as
    PNG when a browser for kaleido is there."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, fig in figures.items():
        path = folder / f"{stem}.html"
        fig.write_html(path, include_plotlyjs=True)
        written.append(path)
    pngs = [folder / f"{stem}.png" for stem in figures]
    if png and figures and export_pngs(list(figures.values()), pngs):
        written += pngs
    return written


def _summary_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The best trial of each optimizer, best first by the first objective."""
    rows = []
    for t in ranked(study, list(best_per_optimizer(study).values())):
        rows.append({
            "optimizer": str(t.params.get(OPTIMIZER_PARAM)),
            "trial": t.number,
            "value": ", ".join(f"{v:.5g}" for v in t.values),
            "time to target (s)": _reached(t.user_attrs.get("hpo2.time_to_target_seconds")),
            "grad-eq to target": _reached(t.user_attrs.get("hpo2.time_to_target_grad_equivalents")),
            "grad-eq total": _reached(t.user_attrs.get("hpo2.grad_equivalents")),
            "settings": settings_text(t),
        })  # fmt: skip
    return rows


def _reached(value: float | None) -> str:
    """A time or cost to the target; None: the target was not reached."""
    if value is None:
        return "not reached"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def report_html(study: optuna.Study, config: StudyConfig, figures: StudyFigures) -> str:
    """One self-contained page: summary and target, the best configuration per optimizer
    (best first, the winner marked), the reuse command, every figure and what was left out."""
    counts = state_counts(study)
    rows = _summary_rows(study)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {"optimizer": ""}))
    body = "".join(
        ('<tr class="winner">' if i == 0 else "<tr>")
        + "".join(f"<td>{html.escape(str(v))}{' (best)' if i == 0 and k == 'optimizer' else ''}</td>"
                  for k, v in r.items())
        + "</tr>"
        for i, r in enumerate(rows)
    )  # fmt: skip
    outcome = confirmation_of(study, config)
    chosen = recommended_trial(study, outcome)
    exported = ("no complete trial yet" if chosen is None
                else yaml.safe_dump(export_config(config, chosen, export_block(outcome, chosen)), sort_keys=False))
    command = f"hpo2 study best {config.name} --export best.yaml && hpo2 train --config best.yaml"
    plots = []
    for i, (stem, fig) in enumerate(figures.figures.items()):
        plots.append(
            f"<h2>{html.escape(stem.replace('_', ' '))}</h2>"
            + fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=f"fig-{stem}")
        )
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in figures.notes)
    states = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    objectives = ", ".join(f"{o.metric} ({d.name.lower()})" for o, d in zip(config.objective, study.directions))
    ranking = "value, best first" + (" (first objective)" if len(study.directions) > 1 else "")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hpo2 study {html.escape(config.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}pre{{background:#f6f6f6;padding:1em}}
tr.winner{{background:#e6f4ea;font-weight:bold}}p.note{{color:#555}}</style></head>
<body><h1>Study {html.escape(config.name)}</h1>
<p>Task <b>{html.escape(config.task.label)}</b>, sampler <b>{html.escape(config.sampler.name)}</b>,
objective {html.escape(objectives)};
trials: {html.escape(states)}.</p>
<p>Target (time-to-target): <b>{html.escape(target_text(config))}</b>.</p>
<h2>Best configuration per optimizer</h2><p>By {ranking}.</p><table><tr>{head}</tr>{body}</table>
{_confirmation_html(outcome, config)}
<h2>Reuse the winner</h2><pre>{html.escape(command)}</pre><pre>{html.escape(exported)}</pre>
{notes}{"".join(plots)}
</body></html>"""


def _confirmation_html(outcome: Confirmation | None, config: StudyConfig) -> str:
    """The confirmation stage's table (the recommended row marked) and its lines, or why there is none."""
    if outcome is None:
        why = "turned off (confirm: false)" if not config.confirm.top_k else "not run yet"
        return f"<h2>Confirmation</h2><p>{'Several objectives: none' if config.multi_objective else why}.</p>"
    rows = confirmation_rows(outcome)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join(('<tr class="winner">' if "recommended" in r["role"] else "<tr>")
                   + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    lines = "".join(f"<p>{html.escape(line)}</p>"
                    for line in confirmation_lines(outcome, f"hpo2 study run {config.name}"))
    return (f"<h2>Confirmation</h2><p>{html.escape(confirmation_title(outcome))}.</p>"
            f"<table><tr>{head}</tr>{body}</table>{lines}")


def render_study_report(
    study: optuna.Study,
    config: StudyConfig,
    tracking_uri: str,
    parent_run_id: str,
    out: Path | None = None,
    png: bool = True,
) -> str:
    """Render the figures and the report, log them to the parent run (and, when PNGs
    can be made, each trial's curvature PNG to its nested run), write the report to
    ``out`` if given; return the report's HTML."""
    client = MlflowClient(tracking_uri=tracking_uri)
    figures = study_figures(study, config, client)
    page = report_html(study, config, figures)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in write_figures(figures.figures, folder / "plots", png):
            client.log_artifact(parent_run_id, str(path), artifact_path="plots")
        (folder / "report.html").write_text(page)
        client.log_artifact(parent_run_id, str(folder / "report.html"))
        if png and not _Kaleido.no_browser:
            _log_trial_pngs(study, client, folder / "trials")
    if out is not None:
        out.write_text(page)
    return page


def _log_trial_pngs(study: optuna.Study, client: MlflowClient, folder: Path) -> None:
    """Each trial's curvature as ``plots/curvature.png`` in its own run (one kaleido session)."""
    trial_figures: dict[str, go.Figure] = {}
    for t in study.get_trials(deepcopy=False):
        run_id = mlflow_run_id(study, t)
        fig = trial_curvature_figure(client, run_id, f"trial {t.number}: curvature") if run_id else None
        if run_id and fig is not None:
            trial_figures[run_id] = fig
    pngs = [folder / run_id / "curvature.png" for run_id in trial_figures]
    for path in pngs:
        path.parent.mkdir(parents=True)
    if trial_figures and export_pngs(list(trial_figures.values()), pngs):
        for run_id, path in zip(trial_figures, pngs, strict=True):
            client.log_artifact(run_id, str(path), artifact_path="plots")
