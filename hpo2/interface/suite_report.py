"""What a suite shows a person: its performance profile (plotly) and tables, as a
self-contained HTML page and a markdown file beside the suite file, and as
metrics and artifacts of the suite's MLflow run.

MLflow metrics of the suite run, per optimizer ``o``: ``profile.<o>.wins``,
``profile.<o>.rho_tau_<tau>`` for tau in 1, 1.5, 2, 4, ``profile.<o>.score``
(AlgoPerf's area) and ``profile.<o>.solved``; per task ``p`` with a finite time:
``time_to_target.<p>.<o>``.  Artifacts: ``plots/performance_profile.html`` (and
``.png`` when kaleido finds a browser, as the study report), ``suite_report.html``,
``suite_report.md`` and ``performance_profile.json`` (times and ratios).
"""

from __future__ import annotations

import html
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from hpo2.interface.report import target_text, write_figures
from hpo2.study.profiles import TABLE_TAUS, PerformanceProfile
from hpo2.study.suite import Suite, TaskResult


def profile_figure(profile: PerformanceProfile) -> go.Figure:
    """:math:`\\rho_o(\\tau)` against :math:`\\tau` (log scale), one step line per optimizer."""
    points = profile.breakpoints()
    right = max(points[-1] * 1.25, profile.tau_max)
    taus = [*points, right]
    fig = go.Figure()
    dashes = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")  # tied optimizers' lines overlap
    for i, o in enumerate(profile.optimizers):
        fig.add_trace(go.Scatter(x=taus, y=[profile.rho(o, tau) for tau in taus], mode="lines", name=o,
                                 line={"shape": "hv", "dash": dashes[i % len(dashes)], "width": 3}))  # fmt: skip
    fig.update_layout(title=f"Performance profile over {len(profile.tasks)} task(s) (Dolan & Moré 2002)",
                      xaxis_title="tau: within this factor of the fastest time-to-target",
                      yaxis_title="fraction of tasks", yaxis_range=[-0.02, 1.02])  # fmt: skip
    fig.update_xaxes(type="log")
    return fig


def _number(value: float, digits: int = 4) -> str:
    return "not reached" if math.isinf(value) else f"{value:.{digits}g}"


def summary_rows(profile: PerformanceProfile) -> list[dict[str, str]]:
    """Per optimizer, best score first: wins, rho at the table's taus, score, share solved."""
    table = profile.summary()
    rows = []
    for o in sorted(profile.optimizers, key=lambda o: -table[o]["score"]):
        row = table[o]
        rows.append({"optimizer": o, "wins": f"{row['wins']:.0f}",
                     **{f"rho({tau:g})": f"{row[f'rho@{tau:g}']:.2f}" for tau in TABLE_TAUS},
                     f"score (area to {profile.tau_max:g})": f"{row['score']:.3f}",
                     "solved": f"{row['solved']:.2f}"})  # fmt: skip
    return rows


def time_rows(suite: Suite, results: list[TaskResult], profile: PerformanceProfile) -> list[dict[str, str]]:
    """Per task: its target, and each optimizer's time-to-target, its ratio and the trial that set it."""
    targets = {label: target_text(config) for label, config in zip(suite.labels, suite.studies, strict=True)}
    rows = []
    for r in results:
        row = {"task": r.label, "target": targets[r.label], "study": r.study}
        for o in profile.optimizers:
            ratio = profile.ratios[o][r.label]
            shown = _number(r.times[o])
            if math.isfinite(ratio):
                shown += f" (x{ratio:.2f}, trial {r.trials[o]})"
            row[o] = f"{shown}; {r.n_trials[o]} trials"
        rows.append(row)
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row[k].replace("|", "/") for k in head) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _intro(suite: Suite, missing: list[str]) -> str:
    unit = "gradient-equivalents" if suite.config.measure == "grad_equivalents" else "seconds of training"
    text = (f"Time-to-target in {unit}: for each optimizer and task, the fastest of its trials to reach the task's "
            f"target; ratio = time / the fastest optimizer's time on that task; rho(tau) = share of tasks within "
            f"tau of the fastest; score = area under rho on [1, {suite.config.tau_max:g}] / "
            f"{suite.config.tau_max - 1:g}.")  # fmt: skip
    if missing:
        text += f" Not run yet, left out: {', '.join(missing)}."
    return text


def suite_markdown(suite: Suite, results: list[TaskResult], missing: list[str], profile: PerformanceProfile) -> str:
    return (f"# Suite {suite.config.name}\n\n{_intro(suite, missing)}\n\n## Performance profile summary\n\n"
            f"{_markdown_table(summary_rows(profile))}\n\n## Time to target per task\n\n"
            f"{_markdown_table(time_rows(suite, results, profile))}\n")  # fmt: skip


def suite_html(
    suite: Suite, results: list[TaskResult], missing: list[str], profile: PerformanceProfile, figure: go.Figure
) -> str:
    """One self-contained page (plotly.js inlined): summary table, profile plot, times per task."""
    name = html.escape(suite.config.name)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hpo2 suite {name}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>Suite {name}</h1><p>{html.escape(_intro(suite, missing))}</p>
<h2>Performance profile summary</h2>{_html_table(summary_rows(profile))}
{figure.to_html(full_html=False, include_plotlyjs=True, div_id="performance-profile")}
<h2>Time to target per task</h2>{_html_table(time_rows(suite, results, profile))}
</body></html>"""


def profile_metrics(results: list[TaskResult], profile: PerformanceProfile) -> dict[str, float]:
    """The suite run's metrics (module docstring)."""
    metrics: dict[str, float] = {}
    for o, row in profile.summary().items():
        metrics[f"profile.{o}.wins"] = row["wins"]
        metrics.update({f"profile.{o}.rho_tau_{tau:g}": row[f"rho@{tau:g}"] for tau in TABLE_TAUS})
        metrics[f"profile.{o}.score"] = row["score"]
        metrics[f"profile.{o}.solved"] = row["solved"]
    for r in results:
        metrics.update({f"time_to_target.{r.label}.{o}": t for o, t in r.times.items() if math.isfinite(t)})
    return metrics


def _json_number(value: float) -> Any:
    return None if math.isinf(value) else value


def render_suite_report(
    suite: Suite, results: list[TaskResult], missing: list[str], profile: PerformanceProfile,
    run_id: str | None, png: bool = True,
) -> tuple[Path, Path]:  # fmt: skip
    """Write ``<name>.suite.html`` and ``<name>.suite.md`` beside the suite file; log
    metrics and artifacts to the suite's MLflow run ``run_id`` (when given) and end
    it FINISHED.  Returns the two paths."""
    figure = profile_figure(profile)
    page = suite_html(suite, results, missing, profile, figure)
    markdown = suite_markdown(suite, results, missing, profile)
    out_html = suite.path.parent / f"{suite.config.name}.suite.html"
    out_md = suite.path.parent / f"{suite.config.name}.suite.md"
    out_html.write_text(page)
    out_md.write_text(markdown)
    if run_id is None:
        return out_html, out_md
    client = MlflowClient(suite.tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in profile_metrics(results, profile).items()])
    data = {"measure": suite.config.measure, "tau_max": profile.tau_max, "tasks": list(profile.tasks),
            "times": {o: {p: _json_number(t) for p, t in row.items()} for o, row in profile.times.items()},
            "ratios": {o: {p: _json_number(r) for p, r in row.items()}
                       for o, row in profile.ratios.items()}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hpo2-suite-") as tmp:
        folder = Path(tmp)
        for path in write_figures({"performance_profile": figure}, folder / "plots", png):
            client.log_artifact(run_id, str(path), artifact_path="plots")
        for file_name, text in (("suite_report.html", page), ("suite_report.md", markdown),
                                ("performance_profile.json", json.dumps(data, indent=1))):  # fmt: skip
            (folder / file_name).write_text(text)
            client.log_artifact(run_id, str(folder / file_name))
    client.set_terminated(run_id, "FINISHED")
    return out_html, out_md
