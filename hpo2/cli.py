"""The ``hpo2`` command line (typer): a thin layer over the library."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import hpo2

app = typer.Typer(
    name="hpo2",
    help="Find the best second-order optimizer, and its settings, for a training job.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"hpo2 {hpo2.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """hpo2: Hessian-vector-product optimizers and the studies that tune them."""


@app.command()
def info() -> None:
    """Show the versions hpo2 runs with and the device a trial would use."""
    import torch

    table = Table(title="hpo2 environment", show_header=False)
    table.add_row("hpo2", hpo2.__version__)
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    cuda = torch.cuda.is_available()
    table.add_row("device", f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu")
    table.add_row("cpu threads", str(torch.get_num_threads()))
    console.print(table)


def fail(message: str) -> typer.Exit:
    """Print a user error (no traceback) and exit with code 2."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML/JSON with task, optimizer, budget (as `study best --export` writes)."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 or auto (default: the config's, else auto)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI; also read from MLFLOW_TRACKING_URI."),
) -> None:
    """Train a task with one optimizer config and print a per-epoch table."""
    from hpo2.config import load_train_config
    from hpo2.optim.settings import SettingsError
    from hpo2.tasks import DataMissingError
    from rich.live import Live

    from hpo2.train import Evaluation, resolve_device, train_from_config

    try:
        cfg = load_train_config(config, {"device": device, "tracking_uri": tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")})
    except SettingsError as exc:
        raise fail(str(exc)) from None
    run = None
    if cfg.tracking_uri:
        from hpo2.tracking import TrackedRun, check_reachable, flatten_params

        try:
            check_reachable(cfg.tracking_uri)
        except SettingsError as exc:
            raise fail(str(exc)) from None

        run = TrackedRun.create(cfg.tracking_uri, cfg.experiment, f"{cfg.task.name}-{cfg.optimizer.name}", {"hpo2.task": cfg.task.name})
        run.log_params({"optimizer": cfg.optimizer.name, "task": cfg.task.name, "seed": cfg.seed,
                        **flatten_params("", cfg.optimizer.settings), **flatten_params("task", cfg.task.settings)})

    table = Table(title=f"{cfg.task.name} / {cfg.optimizer.name}")
    for column in ("epoch", "step", "train loss", "valid loss", "valid metric", "seconds", "grad-eq"):
        table.add_column(column, justify="right")
    try:
        console.print(f"training {cfg.task.name} with {cfg.optimizer.name} on {resolve_device(cfg.device)}")
    except ValueError as exc:
        raise fail(str(exc)) from None

    def report(e: Evaluation) -> None:
        table.add_row(f"{e.epoch:.2f}", str(e.step), f"{e.train_loss:.4g}", f"{e.valid_loss:.4g}",
                      f"{e.valid_metric:.4g}", f"{e.wall_seconds:.2f}", f"{e.grad_equivalents:.0f}")
        if run is not None:
            run.log_metrics({"train_loss": e.train_loss, "valid_loss": e.valid_loss, "valid_metric": e.valid_metric,
                             "wall_seconds": e.wall_seconds, "grad_equivalents": e.grad_equivalents}, step=e.step)

    def on_step(step: int, diag: dict) -> None:
        if run is not None:
            run.log_metrics({f"diag.{k}": v for k, v in diag.items()}, step=step)

    try:
        with Live(table, console=console, refresh_per_second=4):
            task, result = train_from_config(cfg, report=report, on_step=on_step)
    except (DataMissingError, ValueError) as exc:
        if run is not None:
            run.end("FAILED")
        raise fail(str(exc)) from None
    console.print()
    best = result.best_metric
    console.print(f"{result.status}: {result.reason}; best valid {task.metric} = {best if best is None else f'{best:.4g}'}; "
                  f"time to target: {'not reached' if result.time_to_target_seconds is None else f'{result.time_to_target_seconds:.1f}s'}",
                  highlight=False)
    if run is not None:
        run.set_tags({"hpo2.status": result.status, "hpo2.reason": result.reason})
        run.end("FINISHED" if result.status != "diverged" else "FAILED")
    if result.status == "diverged":
        raise typer.Exit(code=1)


study_app = typer.Typer(help="Run and inspect studies (Optuna + MLflow).", no_args_is_help=True)
app.add_typer(study_app, name="study")


def _load_study_file(name_or_file: str, overrides: dict | None = None):  # type: ignore[no-untyped-def]
    from hpo2.optim.settings import SettingsError
    from hpo2.study.config import find_study_file, load_study_config

    try:
        return load_study_config(find_study_file(name_or_file), overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _progress_table(progress) -> Table:  # type: ignore[no-untyped-def]
    counts = progress.counts()
    table = Table(show_header=False, title=f"study {progress.study.study_name if progress.study else ''}")
    table.add_row("trials", f"{counts['complete']} done, {counts['running']} running, {counts['pruned']} pruned, {counts['fail']} failed")
    best = "-"
    if progress.study is not None and counts["complete"] and len(progress.study.directions) == 1:
        best = f"{progress.study.best_value:.5g} (trial {progress.study.best_trial.number}, {progress.study.best_trial.params.get('optimizer')})"
    table.add_row("best", best)
    if progress.current_trial is not None:
        table.add_row("current", f"trial {progress.current_trial} ({progress.current_optimizer}), epoch {progress.current_epoch:.2f}")
    return table


def _run_study(file: str, n_trials: int | None, timeout: float | None, storage: str | None,
               tracking_uri: str | None, device: str | None) -> None:
    from rich.live import Live

    from hpo2.optim.settings import SettingsError
    from hpo2.study.runner import Progress, StudyRunner
    from hpo2.tasks import DataMissingError

    import optuna

    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live table says it all
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    config, path = _load_study_file(file, {"storage": storage, "tracking_uri": tracking_uri, "device": device})
    progress = Progress()
    try:
        runner = StudyRunner(config, path, progress)
    except (SettingsError, DataMissingError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"study {config.name}: task {config.task.name}, sampler {config.sampler.name}, "
                  f"storage {runner.storage_url}, MLflow {runner.tracking_uri}, device {runner.device}", highlight=False)
    from hpo2.study.recovery import StudyInterrupted

    try:
        with Live(_progress_table(progress), console=console, refresh_per_second=4) as live:
            progress.listeners.append(lambda p: live.update(_progress_table(p)))
            runner.run(n_trials, timeout)
    except StudyInterrupted as stopped:
        raise _interrupted(stopped.retried) from None
    except KeyboardInterrupt:  # a second Ctrl-C: a hard stop, recovered like a killed worker
        raise _interrupted([]) from None
    console.print()
    _print_status(runner.study, config)
    if progress.trial_seconds:
        console.print(f"tracking took {100 * progress.tracking_seconds / progress.trial_seconds:.2f}% of trial time", highlight=False)


def _interrupted(retried: list[int]) -> typer.Exit:
    """One line after Ctrl-C or SIGTERM, and exit code 130 (128 + SIGINT, the shell's convention)."""
    if len(retried) == 1:
        what = f"trial {retried[0]} will be retried"
    elif retried:
        what = f"trials {', '.join(map(str, retried))} will be retried"
    else:
        what = "no trial was cut short"
    console.print(f"interrupted: {what}; rerun the same command to resume", highlight=False)
    return typer.Exit(code=130)


@study_app.command("run")
def study_run(
    file: str = typer.Argument(..., help="the study file (studies/*.yaml)"),
    n_trials: int | None = typer.Option(None, help="total finished trials to reach (the count continues on resume)"),
    timeout: float | None = typer.Option(None, help="stop starting trials after this many seconds"),
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: sqlite beside the study file)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: sqlite:///mlflow.db beside the study file)"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or auto"),
) -> None:
    """Create or resume a study and run its trials."""
    _run_study(file, n_trials, timeout, storage, tracking_uri, device)


@app.command()
def worker(
    file: str = typer.Argument(..., help="the study file shared by all workers"),
    storage: str | None = typer.Option(None, help="the shared Optuna storage (PostgreSQL for several machines)"),
    tracking_uri: str | None = typer.Option(None, help="the shared MLflow tracking server"),
    n_trials: int | None = typer.Option(None, help="total trials of the study (all workers together)"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or auto"),
) -> None:
    """Join an existing study from another process or machine and run trials."""
    _run_study(file, n_trials, None, storage, tracking_uri, device)


def _print_status(study, config) -> None:  # type: ignore[no-untyped-def]
    from hpo2.study.results import best_per_optimizer, best_trials, state_counts

    counts = state_counts(study)
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v), highlight=False)
    table = Table(title=f"best per optimizer ({', '.join(d.name.lower() for d in study.directions)})")
    for column in ("optimizer", "trial", "value", "settings"):
        table.add_column(column)
    for name, trial in sorted(best_per_optimizer(study).items()):
        settings = {k.split(".", 1)[1]: v for k, v in trial.params.items() if k.startswith(name + ".")}
        table.add_row(name, str(trial.number), ", ".join(f"{v:.5g}" for v in trial.values),
                      ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()))
    console.print(table)
    best = best_trials(study)
    if best:
        label = "best" if len(best) == 1 else f"Pareto front ({len(best)} trials)"
        console.print(f"{label}: " + "; ".join(f"trial {t.number} {t.params.get('optimizer')} = {t.values}" for t in best), highlight=False)


STORAGE_OPTION = typer.Option(None, "--storage", help="the study's Optuna storage URL, if not the study file's")


def _existing_study(name_or_file: str, overrides: dict):  # type: ignore[no-untyped-def]
    """The study file's config, its path and the study already in storage (or exit 2)."""
    from hpo2.optim.settings import SettingsError
    from hpo2.study.results import load_study

    config, path = _load_study_file(name_or_file, overrides)
    try:
        return config, path, load_study(config, path)
    except SettingsError as exc:
        raise fail(str(exc)) from None


@study_app.command("status")
def study_status(
    name_or_file: str = typer.Argument(..., help="study name (found in studies/) or study file"),
    storage: str | None = STORAGE_OPTION,
) -> None:
    """Trials by state, and the best value and settings per optimizer."""
    config, _, study = _existing_study(name_or_file, {"storage": storage})
    _print_status(study, config)


@study_app.command("best")
def study_best(
    name_or_file: str = typer.Argument(..., help="study name (found in studies/) or study file"),
    export: Path | None = typer.Option(None, "--export", help="write the best trial as a `hpo2 train --config` file"),
    storage: str | None = STORAGE_OPTION,
) -> None:
    """The best trial, optionally exported as a config for `hpo2 train` and `from_config`."""
    import yaml

    from hpo2.study.results import best_trials, export_config, write_export

    config, _, study = _existing_study(name_or_file, {"storage": storage})
    best = best_trials(study)
    if not best:
        raise fail(f"study {config.name!r} has no complete trial yet")
    exported = export_config(config, best[0])
    console.print(yaml.safe_dump(exported, sort_keys=False), highlight=False)
    if export is not None:
        write_export(export, exported)
        console.print(f"wrote {export}; reuse it with: hpo2 train --config {export}", highlight=False)


@study_app.command("report")
def study_report(
    name_or_file: str = typer.Argument(..., help="study name (found in studies/) or study file"),
    out: Path = typer.Option(Path("report.html"), "--out", help="where to write the self-contained HTML report"),
    png: bool = typer.Option(True, help="also render PNGs into MLflow (needs chromium)"),
    storage: str | None = STORAGE_OPTION,
    tracking_uri: str | None = typer.Option(None, help="the study's MLflow tracking URI, if not the study file's"),
) -> None:
    """Render the study's plots into its MLflow run and write one offline HTML report."""
    from mlflow.tracking import MlflowClient

    from hpo2.report import render_study_report
    from hpo2.study.config import default_tracking_uri
    from hpo2.tracking import find_study_run

    config, path, study = _existing_study(name_or_file, {"storage": storage, "tracking_uri": tracking_uri})
    uri = default_tracking_uri(config, path)
    run_id = find_study_run(MlflowClient(uri), config.experiment or config.name, config.name)
    if run_id is None:
        raise fail(f"no MLflow run for study {config.name!r} in {uri}")
    render_study_report(study, config, uri, run_id, out=out, png=png)
    console.print(f"wrote {out} (and the plots to MLflow run {run_id})", highlight=False)


@study_app.command("sync")
def study_sync(
    name_or_file: str = typer.Argument(..., help="study name (found in studies/) or study file"),
    storage: str | None = STORAGE_OPTION,
    tracking_uri: str | None = typer.Option(None, help="the study's MLflow tracking URI, if not the study file's"),
) -> None:
    """Send the study's runs saved in mlflow-unsent/ (tracking was unreachable) to MLflow."""
    from hpo2.optim.settings import SettingsError
    from hpo2.study.config import default_tracking_uri
    from hpo2.study.sync import sync_unsent

    config, path, study = _existing_study(name_or_file, {"storage": storage, "tracking_uri": tracking_uri})
    try:
        sent, left = sync_unsent(study, path.parent / "mlflow-unsent", default_tracking_uri(config, path),
                                 config.experiment or config.name)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    console.print(f"sent {sent} run(s) to MLflow" + (f"; {left} still unsent (tracking unreachable), kept" if left else ""),
                  highlight=False)
    if left:
        raise typer.Exit(code=1)


@app.command()
def dashboard(
    port: int = typer.Option(5000, help="port of the MLflow UI"),
    host: str = typer.Option("127.0.0.1", help="bind address (127.0.0.1: this machine only; MLflow has no login)"),
    tracking_uri: str | None = typer.Option(None, help="backend store (default: studies/mlflow.db if present, else ./mlflow.db)"),
) -> None:
    """Serve the MLflow UI for the project's tracking store (optuna-dashboard alongside if installed)."""
    import shutil
    import subprocess
    import sys

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (
        "sqlite:///studies/mlflow.db" if Path("studies/mlflow.db").is_file() else "sqlite:///mlflow.db"
    )
    from mlflow.tracking import MlflowClient

    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    console.print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C stops it)", highlight=False)
    for exp in MlflowClient(uri).search_experiments():
        if exp.name != "Default":
            console.print(f"  experiment {exp.name}: http://{host}:{port}/#/experiments/{exp.experiment_id}", highlight=False)
    extra = None
    if shutil.which("optuna-dashboard"):
        storage = next((f"sqlite:///{p}" for p in sorted(Path("studies").glob("*.optuna.db"))), None)
        if storage:
            extra = subprocess.Popen(["optuna-dashboard", storage, "--host", host, "--port", str(port + 1)])
            console.print(f"optuna-dashboard for {storage} at http://{host}:{port + 1}", highlight=False)
    try:
        raise typer.Exit(subprocess.call(command))
    finally:
        if extra is not None:
            extra.terminate()
if __name__ == "__main__":
    app()
