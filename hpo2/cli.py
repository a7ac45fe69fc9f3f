"""The ``hpo2`` command line (typer): a thin layer over the library."""

from __future__ import annotations

import platform

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
