"""The ``hpo2`` command line (typer): a thin layer over the library."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup, TyperOption

import hpo2

if TYPE_CHECKING:  # imported lazily below: the CLI starts fast
    import torch

    from hpo2.interface.progress import Progress, StudyDisplay
    from hpo2.study.config import StudyConfig
    from hpo2.study.lookup import NamedStudy
    from hpo2.study.runner import StudyRunner
    from hpo2.study.suite import Suite
    from hpo2.study.tracking import TrainingRun
    from hpo2.tasks.base import Task
    from hpo2.train.loop import Evaluation, TrainConfig, TrainResult


def _bare_flags(params: list[Any]) -> list[Any]:
    """A flag takes no value, so its help shows no value type (typer writes ``--version <bool>``)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
    return params


class _Group(TyperGroup):
    """hpo2 and its command groups: flags without a value type in their help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))


class _Command(TyperCommand):
    """Every hpo2 command: flags without a value type in its help."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))


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
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """hpo2: Hessian-vector-product optimizers and the studies that tune them."""
    quiet_library_logs()


def quiet_library_logs() -> None:
    """MLflow's table-creation INFO lines (mlflow.store, alembic) and the "View run ... at
    <url>" and "View experiment at" lines it writes to stdout for every run it closes
    over HTTP (unless ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``; the worker processes
    inherit it) are not the user's business (hpo2's own display says enough); set here,
    by the application, not at import."""
    import logging

    for name in ("mlflow.store", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


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

    # soft_wrap: the message stays on one line, so paths stay whole
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def optimizers(
    name: str | None = typer.Argument(
        None, help="An optimizer's name: list its settings (default, search range, meaning)."
    ),
) -> None:
    """List the optimizers, or every setting of one with its default, search range, allowed values and meaning."""
    from hpo2.errors import SettingsError
    from hpo2.interface.optimizer_tables import optimizers_table, settings_table

    try:
        console.print(optimizers_table() if name is None else settings_table(name))
    except SettingsError as exc:
        raise fail(str(exc)) from None


@app.command()
def tasks(
    name: str | None = typer.Argument(None, help="A task's name: list its settings (default, allowed, meaning)."),
) -> None:
    """List the tasks and whether their data is here, or every setting of one (`task.settings` in a study file)."""
    from hpo2.errors import SettingsError
    from hpo2.interface.task_tables import task_settings_table, tasks_table

    try:
        console.print(tasks_table() if name is None else task_settings_table(name))
    except SettingsError as exc:
        raise fail(str(exc)) from None


@app.command()
def train(
    config: Path = typer.Option(
        ..., "--config", "-c", help="YAML/JSON with task, optimizer, budget (as `study best --export` writes)."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 or auto (default: the config's, else auto)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI; also read from MLFLOW_TRACKING_URI."),
) -> None:
    """Train a task with one optimizer config and print a per-epoch table."""
    from hpo2.errors import DataMissingError
    from hpo2.interface.progress import live_display
    from hpo2.train.loop import train_from_config

    cfg = _train_config(config, device, tracking_uri)
    on_device = _train_device(cfg)
    run = _training_run(cfg)
    table = _learning_curve_table(f"{cfg.task.label} / {cfg.optimizer.name}")
    console.print(f"training {cfg.task.label} with {cfg.optimizer.name} on {on_device}")

    def report(evaluation: Evaluation) -> None:
        _add_evaluation(table, evaluation)
        if run is not None:
            run.evaluation(evaluation)

    try:
        with live_display(console, table):
            task, result = train_from_config(cfg, report=report, on_step=None if run is None else run.step)
    except (DataMissingError, ValueError) as exc:
        if run is not None:
            run.failed()
        raise fail(str(exc)) from None
    console.print()
    console.print(_training_summary(task, result), highlight=False, soft_wrap=True)
    if run is not None:
        run.finish(result)
    if result.status == "diverged":
        raise typer.Exit(code=1)


def _train_config(config: Path, device: str | None, tracking_uri: str | None) -> TrainConfig:
    """The ``hpo2 train`` config with the command line's overrides (or exit 2)."""
    from hpo2.errors import SettingsError
    from hpo2.train.config import load_train_config

    overrides = {"device": device, "tracking_uri": tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")}
    try:
        return load_train_config(config, overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _train_device(cfg: TrainConfig) -> torch.device:
    """The device the config trains on (or exit 2), known before the MLflow run is created."""
    from hpo2.train.loop import resolve_device

    try:
        return resolve_device(cfg.device)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _training_run(cfg: TrainConfig) -> TrainingRun | None:
    """The MLflow run of ``hpo2 train`` (None without a tracking URI; exit 2 when the store cannot take it)."""
    from hpo2.errors import SettingsError
    from hpo2.study.tracking import TrainingRun

    try:
        return TrainingRun.start(cfg)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _learning_curve_table(title: str) -> Table:
    table = Table(title=title)
    for column in ("epoch", "step", "train loss", "valid loss", "valid metric", "seconds", "grad-eq"):
        table.add_column(column, justify="right")
    return table


def _add_evaluation(table: Table, e: Evaluation) -> None:
    table.add_row(f"{e.epoch:.2f}", str(e.step), f"{e.train_loss:.4g}", f"{e.valid_loss:.4g}",
                  f"{e.valid_metric:.4g}", f"{e.wall_seconds:.2f}", f"{e.grad_equivalents:.0f}")  # fmt: skip


def _training_summary(task: Task, result: TrainResult) -> str:
    """How the training ended: status, reason, best validation metric, time to the task's target."""
    best = result.best_metric
    reached = result.time_to_target_seconds
    to_target = ("no time to target (the task sets no target; task.settings.target gives one)"
                 if task.target is None else f"time to target ({task.target_label}): "
                 f"{'not reached' if reached is None else f'{reached:.1f}s'}")  # fmt: skip
    return (f"{result.status}: {result.reason}; best valid {task.metric} = {best if best is None else f'{best:.4g}'}; "
            f"{to_target}")


study_app = typer.Typer(help="Run and inspect studies (Optuna + MLflow).", no_args_is_help=True)
app.add_typer(study_app, name="study")


def _named_study(name_or_file: str, overrides: dict | None = None, *, to_run: bool = False) -> NamedStudy:
    """The study a command names: a study file, a study's name, or a suite's study
    ``<suite>.<label>`` (:mod:`hpo2.study.lookup`); a suite's study is run by
    ``hpo2 suite run``, which nests it under the suite and checks its target."""
    from hpo2.errors import SettingsError
    from hpo2.study.lookup import load_named_study

    try:
        found = load_named_study(name_or_file, overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    if to_run and found.suite is not None:
        raise fail(f"{found.config.name!r} is the study of one task of suite {found.suite!r}: run it with "
                   f"`{found.run_command}` (--n-trials N gives each task's study N trials)")
    return found


def _load_study_file(name_or_file: str, overrides: dict | None = None, *, to_run: bool = False):
    found = _named_study(name_or_file, overrides, to_run=to_run)
    return found.config, found.path


def _nothing_to_do(config, path: Path, target: int | None) -> bool:
    """A rerun of a study whose trial budget is spent says so and shows its status (no re-render)."""
    from hpo2.interface.progress import print_status
    from hpo2.study.catalog import budget_spent, open_existing, study_closed
    from hpo2.study.config import default_storage
    from hpo2.study.confirm import confirmation_left

    try:
        study = open_existing(config, path)
        if study is None or not study_closed(config, path):  # never run, or its end (report) was cut short
            return False
    except Exception:  # noqa: BLE001 -- any driver's error: the run that follows reports it as a one-line error
        return False
    done = budget_spent(study, default_storage(config, path), target)
    if done is None or confirmation_left(study, config):
        return False
    console.print(f"nothing to do: {done} of {target} trials done (raise --n-trials to run more)", highlight=False)
    print_status(console, study, config)
    return True


def _run_study(file: str, n_trials: int | None, timeout: float | None, storage: str | None,
               tracking_uri: str | None, device: str | None, warm_start: str | None = None) -> None:
    import warnings

    import optuna

    from hpo2.interface.progress import Progress, StudyDisplay, print_status
    from hpo2.study.locate import beside_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the live table says it all
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    config, path = _load_study_file(file, {"storage": storage, "tracking_uri": tracking_uri, "device": device,
                                           "n_trials": n_trials, "timeout": timeout, "warm_start": warm_start},
                                    to_run=True)
    target = config.n_trials
    if target is not None and _nothing_to_do(config, path, target):
        return
    report_file = beside_study(path, config.name, ".report.html") if config.report else None
    progress = Progress()
    runner = _open_runner(config, path, progress, report_file)
    _run_live(runner, progress, StudyDisplay(console, target, config.timeout, config.jobs, report_file))
    console.print()
    print_status(console, runner.study, config)
    if progress.trial_seconds:
        console.print(
            f"tracking took {100 * progress.tracking_seconds / progress.trial_seconds:.2f}% of trial time",
            highlight=False,
        )


def _open_runner(config: StudyConfig, path: Path, progress: Progress, report_file: Path | None) -> StudyRunner:
    """The study's runner, opened (or exit 2), after a line saying what runs where; the
    report is rendered beside the study, as `study report` writes it, when ``report_file`` is given."""
    import functools

    from hpo2.common.redact import redact_url
    from hpo2.errors import DataMissingError, SettingsError
    from hpo2.study.runner import StudyReport, StudyRunner

    report: StudyReport | None = None
    if report_file is not None:
        from hpo2.interface.report import render_study_report

        report = functools.partial(render_study_report, out=report_file)
    try:
        runner = StudyRunner(config, path, progress, report).open()
    except (SettingsError, DataMissingError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"study {config.name}: task {config.task.label}, sampler {config.sampler.name}, "
        f"storage {redact_url(runner.storage_url)}, MLflow {redact_url(runner.tracking_uri)}, device {runner.device}",
        highlight=False,
    )
    for note in runner.warm_start.notes if runner.warm_start is not None else []:
        console.print(note, highlight=False)
    return runner


def _run_live(runner: StudyRunner, progress: Progress, display: StudyDisplay) -> None:
    """Run the study's trials under its live table; a lost storage or an interruption is one line."""
    from hpo2.interface.progress import live_display
    from hpo2.study.recovery import StudyInterrupted
    from hpo2.study.storage import StorageLost

    try:
        with live_display(console, display.table(progress)) as live:
            progress.listeners.append(lambda p: live.update(display.table(p)))
            runner.run()  # n_trials and timeout: the validated config, CLI overrides included
    except StorageLost as lost:  # the storage kept failing: one line, as for a store unusable at the start
        raise fail(str(lost)) from None
    except StudyInterrupted as stopped:
        raise _interrupted(stopped.retried) from None
    except KeyboardInterrupt:  # a second Ctrl-C: a hard stop, recovered like a killed worker
        raise _interrupted([]) from None


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
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI (default: sqlite:///mlflow.db beside the study file)"
    ),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or auto"),
    warm_start: str | None = typer.Option(
        None, help="an earlier study (name, file or storage URL) whose best configurations per optimizer run first"
    ),
) -> None:
    """Create or resume a study and run its trials."""
    _run_study(file, n_trials, timeout, storage, tracking_uri, device, warm_start)


@app.command()
def worker(
    file: str = typer.Argument(..., help="the study file shared by all workers"),
    storage: str | None = typer.Option(None, help="the shared Optuna storage (PostgreSQL for several machines)"),
    tracking_uri: str | None = typer.Option(None, help="the shared MLflow tracking server"),
    n_trials: int | None = typer.Option(None, help="total trials of the study (all workers together)"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or auto"),
    trials_per_device: int | None = typer.Option(
        None, min=1, max=64, help="start N worker processes per visible GPU (per --device; the CPU without one), "
        "sharing the study and its trial budget; Ctrl-C stops them all"),
) -> None:
    """Join an existing study from another process or machine and run trials."""
    if trials_per_device is None:
        _run_study(file, n_trials, None, storage, tracking_uri, device)
        return
    from hpo2.study.workers import WorkerPool, plan_slots, visible_gpus

    config, _ = _load_study_file(file, {"storage": storage, "tracking_uri": tracking_uri, "n_trials": n_trials},
                                 to_run=True)
    try:
        slots = plan_slots(trials_per_device, device or config.device, visible_gpus(), os.cpu_count() or 1)
    except ValueError as exc:
        raise fail(str(exc)) from None
    args = [file]
    for flag, value in (("--storage", storage), ("--tracking-uri", tracking_uri), ("--n-trials", n_trials)):
        if value is not None:
            args += [flag, str(value)]
    code = WorkerPool(args, slots).run()
    if code == 130:
        console.print("interrupted: every worker stopped; rerun the same command to resume", highlight=False)
    raise typer.Exit(code)


STORAGE_OPTION = typer.Option(None, "--storage", help="the study's Optuna storage URL, if not the study file's")
STUDY_ARGUMENT_HELP = "a study file, a study's name (found in studies/), or a suite's study <suite>.<task label>"


def _existing_study(name_or_file: str, overrides: dict):
    """The study file's config, its path and the study already in storage (or exit 2)."""
    from hpo2.errors import SettingsError
    from hpo2.study.results import load_study

    found = _named_study(name_or_file, overrides)
    try:
        return found.config, found.path, load_study(found.config, found.path, found.run_command)
    except SettingsError as exc:
        raise fail(str(exc)) from None


@study_app.command("status")
def study_status(
    name_or_file: str = typer.Argument(..., help=STUDY_ARGUMENT_HELP),
    storage: str | None = STORAGE_OPTION,
) -> None:
    """Trials by state, and the best value and settings per optimizer."""
    from hpo2.interface.progress import print_status
    from hpo2.study.locate import shown_path

    config, path, study = _existing_study(name_or_file, {"storage": storage})
    print_status(console, study, config, f"hpo2 study run {shown_path(path)}")


@study_app.command("best")
def study_best(
    name_or_file: str = typer.Argument(..., help=STUDY_ARGUMENT_HELP),
    export: Path | None = typer.Option(
        None,
        "--export",
        help="where to write the best trial as a `hpo2 train --config` file (default: <study dir>/<name>.best.yaml)",
    ),
    storage: str | None = STORAGE_OPTION,
) -> None:
    """The best trial -- the confirmation stage's recommendation once it ran -- written as a
    config for `hpo2 train` and `from_config`."""
    import yaml

    from hpo2.interface.progress import print_confirmation, print_edge_hints
    from hpo2.study.confirm import confirmation_of, export_block, recommended_trial
    from hpo2.study.locate import beside_study, shown_path
    from hpo2.study.results import export_config, write_export

    config, path, study = _existing_study(name_or_file, {"storage": storage})
    outcome = confirmation_of(study, config)
    chosen = recommended_trial(study, outcome)
    if chosen is None:
        raise fail(f"study {config.name!r} has no complete trial yet")
    best = [chosen]
    exported = export_config(config, chosen, export_block(outcome, chosen))
    console.print(yaml.safe_dump(exported, sort_keys=False), highlight=False)
    print_confirmation(console, outcome, f"hpo2 study run {shown_path(path)}")
    target = export or beside_study(path, config.name, ".best.yaml")
    try:
        write_export(target, exported)
    except OSError as exc:
        raise fail(f"--export: cannot write {target} ({exc.strerror}); give a writable path") from None
    console.print(
        f"wrote {shown_path(target)}; reuse it with: hpo2 train --config {shown_path(target)}", highlight=False
    )
    print_edge_hints(console, best[:1])


@study_app.command("report")
def study_report(
    name_or_file: str = typer.Argument(..., help=STUDY_ARGUMENT_HELP),
    out: Path | None = typer.Option(None, "--out", help="where to write the self-contained HTML report "
                                    "(default: <study dir>/<name>.report.html)"),
    png: bool = typer.Option(True, help="also render PNGs into MLflow (needs chromium)"),
    storage: str | None = STORAGE_OPTION,
    tracking_uri: str | None = typer.Option(None, help="the study's MLflow tracking URI, if not the study file's"),
) -> None:
    """Render the study's plots into its MLflow run and write one offline HTML report."""
    from mlflow.tracking import MlflowClient

    from hpo2.common.redact import redact_url
    from hpo2.interface.report import render_study_report
    from hpo2.study.config import default_tracking_uri
    from hpo2.study.locate import beside_study, shown_path
    from hpo2.study.tracking import find_study_run

    config, path, study = _existing_study(name_or_file, {"storage": storage, "tracking_uri": tracking_uri})
    uri = default_tracking_uri(config, path)
    run_id = find_study_run(MlflowClient(uri), config.experiment or config.name, config.name)
    if run_id is None:
        raise fail(f"no MLflow run for study {config.name!r} in {redact_url(uri)}")
    target = out or beside_study(path, config.name, ".report.html")
    console.print(
        f"rendering the plots of {len(study.trials)} trials into MLflow run {run_id}, then {shown_path(target)}"
        f"{' (PNG copies take a while)' if png else ''} ...",
        highlight=False,
    )
    with console.status("rendering ..."):
        render_study_report(study, config, uri, run_id, out=target, png=png)
    console.print(f"wrote {shown_path(target)} (and the plots to MLflow run {run_id})", highlight=False)


@study_app.command("list")
def study_list() -> None:
    """The studies in the project's studies folder: task, trials finished, best value, storage."""
    from hpo2.common.databases import local_file
    from hpo2.interface.tables import Column, FittedTable
    from hpo2.study.catalog import list_studies
    from hpo2.study.locate import STUDIES_ENV, shown_path, studies_folder

    folder = studies_folder()
    if folder is None or not folder.is_dir():
        raise fail(f"no studies folder here or above {Path.cwd()}; run from the project or set {STUDIES_ENV}")
    rows = list_studies(folder)
    table = FittedTable(Column("name", "name"), Column("task", "name"), "trials", "best", Column("storage", "note"),
                        title=f"studies in {shown_path(folder)}")
    for row in rows:
        trials = "?" if not row.readable else "not run" if row.finished is None else (
            f"{row.finished}" + ("" if row.n_trials is None else f"/{row.n_trials}"))
        local = local_file(row.storage)  # a file of the listed folder: its name is enough
        storage = row.storage if local is None else shown_path(local, folder)
        table.add_row(row.name, row.task, trials, row.best, storage)
    console.print(table)


@study_app.command("delete")
def study_delete(
    name_or_file: str = typer.Argument(..., help=STUDY_ARGUMENT_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="delete without asking"),
    force: bool = typer.Option(False, "--force", help="delete even while trials are RUNNING (a worker runs them)"),
    storage: str | None = STORAGE_OPTION,
    tracking_uri: str | None = typer.Option(None, help="the study's MLflow tracking URI, if not the study file's"),
) -> None:
    """Delete a study's Optuna trials and its MLflow runs (the study file stays); refused while trials run."""
    from hpo2.study.catalog import Deletion

    config, path = _load_study_file(name_or_file, {"storage": storage, "tracking_uri": tracking_uri})
    plan = Deletion.plan(config, path)
    if plan.empty:
        raise fail(f"study {config.name!r} has nothing to delete: no trials in its storage and no MLflow runs")
    if plan.refusal() and not force:
        raise fail(plan.refusal())
    if not yes and not typer.confirm(f"delete {plan.describe()}?", default=False):
        console.print("nothing deleted", highlight=False)
        raise typer.Exit(1)
    plan.execute()
    console.print(f"deleted {plan.describe()}", highlight=False)


@study_app.command("sync")
def study_sync(
    name_or_file: str = typer.Argument(..., help=STUDY_ARGUMENT_HELP),
    storage: str | None = STORAGE_OPTION,
    tracking_uri: str | None = typer.Option(None, help="the study's MLflow tracking URI, if not the study file's"),
) -> None:
    """Send the study's runs saved in mlflow-unsent/ (tracking was unreachable) to MLflow."""
    from hpo2.errors import SettingsError
    from hpo2.study.config import default_tracking_uri
    from hpo2.study.sync import sync_unsent

    config, path, study = _existing_study(name_or_file, {"storage": storage, "tracking_uri": tracking_uri})
    try:
        sent, left, refused = sync_unsent(study, path.parent / "mlflow-unsent", default_tracking_uri(config, path),
                                          config.experiment or config.name)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    for reason in refused:
        console.print(f"dropped what MLflow refused (sending it again would be refused again): {reason}",
                      highlight=False, soft_wrap=True)
    console.print(
        f"sent {sent} run(s) to MLflow" + (f"; {left} still unsent (tracking unreachable), kept" if left else ""),
        highlight=False,
    )
    if left:
        raise typer.Exit(code=1)


suite_app = typer.Typer(help="Studies over several tasks and their performance profiles (hpo2.study.suite).",
                        no_args_is_help=True)
app.add_typer(suite_app, name="suite")


def _load_suite(name_or_file: str, overrides: dict[str, str | int | None] | None = None) -> Suite:
    from hpo2.errors import SettingsError
    from hpo2.study.suite import find_suite_file, load_suite

    try:
        return load_suite(find_suite_file(name_or_file), overrides)
    except SettingsError as exc:
        raise fail(str(exc)) from None


def _write_suite_report(suite: Suite, run_id: str | None, png: bool) -> None:
    from hpo2.interface.suite_report import render_suite_report, summary_rows
    from hpo2.interface.tables import Column, FittedTable
    from hpo2.study.locate import shown_path
    from hpo2.study.suite import suite_profile, suite_results

    results, missing = suite_results(suite)
    if not results:
        raise fail(f"suite {suite.config.name!r}: no task's study has run yet; run `hpo2 suite run {suite.path}`")
    profile = suite_profile(suite, results)
    with console.status("rendering the performance profile ..."):
        out_html, out_md = render_suite_report(suite, results, missing, profile, run_id, png)
    rows = summary_rows(profile)
    first, *others = rows[0]
    table = FittedTable(Column(first, "name"), *(Column(c, justify="right") for c in others),
                        title=f"suite {suite.config.name}: performance profile over {len(results)} task(s)")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    console.print(f"wrote {shown_path(out_html)} and {shown_path(out_md)}"
                  + (f" (and MLflow run {run_id})" if run_id else ""), highlight=False)


@suite_app.command("run")
def suite_run(
    file: str = typer.Argument(..., help="the suite file (tasks, optimizers, shared study settings)"),
    n_trials: int | None = typer.Option(None, help="trials of each task's study (the count continues on resume)"),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:N or auto"),
    png: bool = typer.Option(True, help="also render the profile as PNG (needs chromium)"),
) -> None:
    """Run (or resume) one study per task, then write the suite's performance profile."""
    import warnings

    import optuna

    from hpo2.errors import DataMissingError, SettingsError
    from hpo2.interface.progress import Progress, StudyDisplay, live_display
    from hpo2.interface.report import render_study_report
    from hpo2.study.recovery import StudyInterrupted
    from hpo2.study.suite import run_suite

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    suite = _load_suite(file, {"device": device, "n_trials": n_trials})
    progress = Progress()

    def run_one(runner: StudyRunner) -> None:
        display = StudyDisplay(console, runner.config.n_trials, runner.config.timeout, runner.config.jobs)
        progress.listeners[:] = []
        with live_display(console, display.table(progress)) as live:
            progress.listeners.append(lambda p: live.update(display.table(p)))
            runner.run()

    try:
        run_id = run_suite(suite, run_one, lambda line: console.print(line, highlight=False), progress,
                           render_study_report)
    except (SettingsError, DataMissingError, ValueError) as exc:
        raise fail(str(exc)) from None
    except StudyInterrupted as stopped:
        raise _interrupted(stopped.retried) from None
    except KeyboardInterrupt:
        raise _interrupted([]) from None
    _write_suite_report(suite, run_id, png)


@suite_app.command("report")
def suite_report(
    name_or_file: str = typer.Argument(..., help="suite name (found in studies/) or suite file"),
    png: bool = typer.Option(True, help="also render the profile as PNG (needs chromium)"),
) -> None:
    """Recompute the performance profile from the studies so far and write the report."""
    from mlflow.tracking import MlflowClient

    from hpo2.common.databases import local_file
    from hpo2.study.tracking import find_study_run

    suite = _load_suite(name_or_file)
    local, run_id = local_file(suite.tracking_uri), None
    client = MlflowClient(suite.tracking_uri) if local is None or local.is_file() else None  # creates no mlflow.db
    if client is not None and client.get_experiment_by_name(suite.experiment) is not None:
        run_id = find_study_run(client, suite.experiment, suite.config.name, role="suite")
    _write_suite_report(suite, run_id, png)


@app.command()
def dashboard(
    port: int = typer.Option(5000, help="port of the MLflow UI"),
    host: str = typer.Option("127.0.0.1", help="bind address (127.0.0.1: this machine only; MLflow has no login)"),
    tracking_uri: str | None = typer.Option(
        None,
        help="backend store to serve, also read from MLFLOW_TRACKING_URI "
        "(default: studies/mlflow.db, found upward from here)",
    ),
    study: str | None = typer.Option(None, "--study", help="serve the tracking store of this study (name or file)"),
) -> None:
    """Serve the MLflow UI for the project's tracking store (and optuna-dashboard if installed); Ctrl-C stops it."""
    from hpo2.common.redact import redact_url
    from hpo2.errors import SettingsError
    from hpo2.interface.dashboard import READY_SECONDS, serve, server_env, tracking_store

    try:
        uri = tracking_store(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), study)
    except SettingsError as exc:
        raise fail(str(exc)) from None
    commands, lines = _dashboard_servers(uri, host, port)
    console.print(f"starting the MLflow UI for {redact_url(uri)} on http://{host}:{port} ...",
                  highlight=False, soft_wrap=True)  # fmt: skip

    def ready(answered: bool) -> None:
        if not answered:
            console.print(f"the MLflow server has not answered within {READY_SECONDS:.0f} s; it may still",
                          highlight=False)  # fmt: skip
        console.print(f"MLflow UI at http://{host}:{port} (Ctrl-C stops it)", highlight=False)
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)

    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    code = serve(commands, server_env(uri), f"http://{local}:{port}/health", ready)
    console.print("stopped the dashboard" if code == 0 else f"the MLflow server exited with code {code}",
                  highlight=False)  # fmt: skip
    raise typer.Exit(code)


def _dashboard_servers(uri: str, host: str, port: int) -> tuple[list[list[str]], list[str]]:
    """The commands of the MLflow server for ``uri`` (and of optuna-dashboard, one port up, when
    it is installed and the studies folder holds a sqlite storage) and the lines that link to them."""
    import shutil

    from mlflow.tracking import MlflowClient

    from hpo2.interface.dashboard import runs_url, server_command, study_links
    from hpo2.study.locate import studies_folder

    commands = [server_command(host, port)]
    links = study_links(MlflowClient(uri))
    lines = [f"  {link.label}: {runs_url(host, port, link.experiment_id, link.view)}" for link in links]
    folder = studies_folder()
    storage = next((f"sqlite:///{p}" for p in sorted(folder.glob("*.optuna.db"))), None) if folder else None
    if shutil.which("optuna-dashboard") and storage:
        commands.append(["optuna-dashboard", storage, "--host", host, "--port", str(port + 1)])
        lines.append(f"optuna-dashboard for {storage} at http://{host}:{port + 1}")
    return commands, lines


for _app in (app, study_app, suite_app):  # every group and command: after the last command is defined
    _app.info.cls = _Group
    for _info in _app.registered_commands:
        if _info.cls in (None, TyperCommand):  # not a command that chose its own class
            _info.cls = _Command
