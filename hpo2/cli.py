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
    console.print(f"[bold red]error:[/] {message}", highlight=False)
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
        from hpo2.tracking import TrackedRun, flatten_params

        run = TrackedRun(cfg.tracking_uri, cfg.experiment, f"{cfg.task.name}-{cfg.optimizer.name}", {"hpo2.task": cfg.task.name})
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
