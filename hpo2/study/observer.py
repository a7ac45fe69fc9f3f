"""What a running study tells whoever watches it (the CLI's live table, a test).

:class:`StudyRunner <hpo2.study.runner.StudyRunner>` calls these hooks; the base
class does nothing, so the study layer knows no display.  The CLI's
:class:`hpo2.interface.progress.Progress` overrides them.  Hooks run in the trial's thread
(several threads when a study runs ``jobs`` > 1)."""

from __future__ import annotations

import optuna


class StudyObserver:
    """Hooks called as a study runs; each does nothing unless overridden."""

    def study_opened(self, study: optuna.Study) -> None:
        """The study was created or loaded from its storage."""

    def trial_started(self, number: int, optimizer: str) -> None:
        """Trial ``number`` suggested ``optimizer`` and is about to train."""

    def trial_evaluated(self, number: int, epoch: float) -> None:
        """Trial ``number`` finished an evaluation at ``epoch`` (fractional epochs count)."""

    def trial_tracked(self, tracking_seconds: float, trial_seconds: float) -> None:
        """A trial's MLflow run closed: the seconds spent tracking, of the trial's ``trial_seconds``."""

    def trial_stored(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial's final state is in the storage (complete, pruned or failed)."""

    def confirmation_started(self, confirm: optuna.Study, runs: int) -> None:
        """The confirmation stage starts: ``confirm`` is its study, ``runs`` its planned runs in all."""

    def report_started(self) -> None:
        """The study's report started rendering (its plots, and their PNG copies: seconds to a minute)."""

    def report_finished(self) -> None:
        """The report is rendered and logged to the study's parent run."""
