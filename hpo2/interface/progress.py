"""What the CLI shows about a study: the live table while trials run (counts, best,
elapsed time, an ETA), one line per finished trial, and the status summary.

The ETA is the mean duration :math:`\\bar d` of the study's finished trials times
the work left: with :math:`r` trials still to finish, :math:`e_i` the elapsed time
of the running ones and :math:`J` parallel jobs,

.. math:: \\mathrm{ETA} = \\max\\Big(0,\\; \\frac{r \\bar d - \\sum_i \\min(e_i, \\bar d)}{J}\\Big),

capped by what is left of the timeout.  Values are printed with 5 significant
digits, and every objective is named with its direction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from hpo2.interface.confirmation import confirmation_lines, confirmation_rows, confirmation_title
from hpo2.interface.tables import Column, FittedTable
from hpo2.study.config import StudyConfig
from hpo2.study.confirm import Confirmation
from hpo2.study.locate import shown_path
from hpo2.study.observer import StudyObserver
from hpo2.study.results import round_values
from hpo2.study.space import edge_hints

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@contextmanager
def live_display(console: Console, renderable: RenderableType) -> Iterator[Live]:
    """``rich``'s :class:`~rich.live.Live` on ``console``, whose output ends with a line
    break also when it is not a terminal: piped, Live prints its last render once and
    leaves that line open, so the next print would continue it."""
    try:
        with Live(renderable, console=console, refresh_per_second=4) as live:
            yield live
    finally:
        if not console.is_terminal:
            console.line()


def objectives_label(config: StudyConfig, study: optuna.Study) -> str:
    """``valid_loss (minimize), grad_equivalents (minimize)``: each objective and its direction."""
    return ", ".join(f"{o.metric} ({d.name.lower()})" for o, d in zip(config.objective, study.directions))


def duration_text(seconds: float | None) -> str:
    """``75.2`` -> ``1:15``; None -> ``-``."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def trial_seconds(trial: FrozenTrial, now: datetime | None = None) -> float | None:
    """Wall time of a trial (so far, for a running one)."""
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or now or datetime.now()
    return (end - trial.datetime_start).total_seconds()


def eta_seconds(
    trials: Sequence[FrozenTrial], target: int | None, elapsed: float, timeout: float | None, jobs: int = 1
) -> float | None:
    """Seconds until ``target`` trials are finished or the timeout ends (module docstring); None if unknown."""
    estimates = [] if timeout is None else [max(timeout - elapsed, 0.0)]
    durations = [d for t in trials if t.state in FINISHED and (d := trial_seconds(t)) is not None]
    if target is not None and durations:
        mean = sum(durations) / len(durations)
        remaining = max(target - len(durations), 0)
        in_progress = sum(min(trial_seconds(t) or 0.0, mean) for t in trials if t.state == TrialState.RUNNING)
        estimates.append(max(remaining * mean - in_progress, 0.0) / jobs)
    return min(estimates) if estimates else None


def trial_line(trial: FrozenTrial) -> str:
    """``trial 3  adam  complete  0.95294  1.2s``: one finished trial."""
    seconds = trial_seconds(trial)
    return (f"trial {trial.number:>3}  {trial.params.get('optimizer', '?'):<12}  {trial.state.name.lower():<8}  "
            f"{round_values(trial.values):>10}  {'-' if seconds is None else f'{seconds:.1f}s'}")  # fmt: skip


@dataclass
class Progress(StudyObserver):
    """What the live display shows, kept up to date by the runner's hooks; each hook
    then calls every listener (the display redraws)."""

    study: optuna.Study | None = None
    current_trial: int | None = None
    current_epoch: float = 0.0
    current_optimizer: str = ""
    tracking_seconds: float = 0.0
    trial_seconds: float = 0.0
    report: Literal["", "rendering", "done"] = ""
    confirm: optuna.Study | None = None  # the confirmation stage's study, once it started
    confirm_runs: int = 0
    listeners: list[Callable[[Progress], None]] = field(default_factory=list)

    def changed(self) -> None:
        for listener in self.listeners:
            listener(self)

    def study_opened(self, study: optuna.Study) -> None:
        self.study = study

    def trial_started(self, number: int, optimizer: str) -> None:
        self.current_trial, self.current_optimizer, self.current_epoch = number, optimizer, 0.0
        self.changed()

    def trial_evaluated(self, number: int, epoch: float) -> None:
        self.current_epoch = epoch
        self.changed()

    def trial_tracked(self, tracking_seconds: float, trial_seconds: float) -> None:
        self.tracking_seconds += tracking_seconds
        self.trial_seconds += trial_seconds

    def trial_stored(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.changed()

    def confirmation_started(self, confirm: optuna.Study, runs: int) -> None:
        self.confirm, self.confirm_runs, self.current_trial = confirm, runs, None
        self.changed()

    def report_started(self) -> None:
        self.report = "rendering"
        self.changed()

    def report_finished(self) -> None:
        self.report = "done"
        self.changed()


class StudyDisplay:
    """The live table of a running study, plus a printed line per finished trial, and
    a line when the final report starts rendering and one when it is written (to
    ``report``, the file beside the study, if given).

    :meth:`table` is called by a :class:`Progress` listener: it reads the study's
    trials once per call and prints the trials that finished since."""

    def __init__(
        self, console: Console, target: int | None, timeout: float | None, jobs: int = 1, report: Path | None = None,
    ) -> None:  # fmt: skip
        self.console = console
        self.target = target
        self.timeout = timeout
        self.jobs = jobs
        self.report = report
        self.started = time.monotonic()
        self.seen: set[int] | None = None  # finished trials already shown (those before this run: not printed)
        self.report_said = ""  # the report stage already printed
        self._lock = threading.Lock()  # with `jobs` > 1 the listeners run in several threads

    def table(self, progress: Progress) -> Table:
        """The table for ``progress``; prints newly finished trials (and the report's progress) above it."""
        study = progress.study
        trials = study.get_trials(deepcopy=False) if study is not None else []
        self._print_finished(trials)
        self._print_report(progress.report)
        counts = {s: sum(t.state == s for t in trials) for s in (*FINISHED, TrialState.RUNNING)}
        table = Table(show_header=False, title=f"study {study.study_name if study else ''}")
        total = "" if self.target is None else f" of {self.target}"
        table.add_row("trials", f"{len([t for t in trials if t.state in FINISHED])}{total} finished: "
                                f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
                                f"{counts[TrialState.FAIL]} failed; {counts[TrialState.RUNNING]} running")  # fmt: skip
        table.add_row("best", self._best(study, trials))
        elapsed = time.monotonic() - self.started
        eta = eta_seconds(trials, self.target, elapsed, self.timeout, self.jobs)
        table.add_row("time", f"{duration_text(elapsed)} elapsed, ETA {duration_text(eta)}")
        if progress.confirm is not None:
            runs = progress.confirm.get_trials(deepcopy=False, states=FINISHED)
            table.add_row("confirm", f"{len(runs)} of {progress.confirm_runs} confirmation runs (new seeds) finished")
        if progress.current_trial is not None:
            table.add_row(
                "current",
                f"{'confirmation run' if progress.confirm is not None else 'trial'} {progress.current_trial} "
                f"({progress.current_optimizer}), epoch {progress.current_epoch:.2f}",
            )
        return table

    def _print_finished(self, trials: Sequence[FrozenTrial]) -> None:
        finished = {t.number: t for t in trials if t.state in FINISHED}
        with self._lock:
            if self.seen is None:
                self.seen = set(finished)
                return
            for number in sorted(set(finished) - self.seen):
                self.console.print(trial_line(finished[number]), highlight=False)
            self.seen |= set(finished)

    def _print_report(self, stage: str) -> None:
        with self._lock:
            if stage == self.report_said:
                return
            self.report_said = stage
        where = "the study's MLflow run" + (f" and {shown_path(self.report)}" if self.report else "")
        if stage == "rendering":
            self.console.print(f"rendering the report into {where} ...", highlight=False, soft_wrap=True)
        elif stage == "done":
            self.console.print(f"wrote the report to {where}", highlight=False, soft_wrap=True)

    @staticmethod
    def _best(study: optuna.Study | None, trials: Sequence[FrozenTrial]) -> str:
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if study is None or not complete or len(study.directions) != 1:
            return "-"
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = pick(complete, key=lambda t: t.values[0])
        return f"{round_values(best.values)} (trial {best.number}, {best.params.get('optimizer')})"


def print_status(console: Console, study: optuna.Study, config: StudyConfig, rerun: str = "hpo2 study run") -> None:
    """Trials by state, a table of the best trial per optimizer (best first), the best trial(s),
    and the confirmation stage (``rerun``: the command that finishes it)."""
    from hpo2.study.confirm import confirmation_of
    from hpo2.study.results import best_per_optimizer, best_trials, ranked, settings_text, state_counts

    counts = state_counts(study)
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v), highlight=False)
    console.print(f"objective: {objectives_label(config, study)}", highlight=False)
    table = FittedTable(Column("optimizer", "name"), Column("trial", justify="right"), "value",
                        Column("settings", "note"),
                        title="best per optimizer" + (" (first objective)" if len(study.directions) > 1 else ""))
    for trial in ranked(study, list(best_per_optimizer(study).values())):  # best first
        table.add_row(str(trial.params.get("optimizer")), str(trial.number), round_values(trial.values),
                      settings_text(trial))
    console.print(table)
    best = best_trials(study)
    if best:
        label = "best" if len(best) == 1 else f"Pareto front ({len(best)} trials)"
        console.print(
            f"{label}: "
            + "; ".join(f"trial {t.number} {t.params.get('optimizer')} = {round_values(t.values)}" for t in best),
            highlight=False,
        )
    print_confirmation(console, confirmation_of(study, config), rerun)
    print_edge_hints(console, best)


def print_confirmation(console: Console, outcome: Confirmation | None, rerun: str) -> None:
    """The confirmation table and lines (nothing when the study has no confirmation)."""
    if outcome is None:
        return
    rows = confirmation_rows(outcome)
    columns = [Column(k, "name" if k == "optimizer" else "note" if k == "role" else "value") for k in rows[0]]
    table = FittedTable(*columns, title=confirmation_title(outcome))
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    for line in confirmation_lines(outcome, rerun):
        console.print(line, highlight=False, soft_wrap=True)


def print_edge_hints(console: Console, best: Sequence[FrozenTrial]) -> None:
    """A ``hint:`` line for each setting of the best trial(s) at an end of its search range."""
    for hint in dict.fromkeys(h for t in best for h in edge_hints(t)):  # each once, in order
        console.print(f"hint: {hint}", highlight=False, soft_wrap=True)
