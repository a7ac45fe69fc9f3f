"""hpo2: find the best second-order optimizer, and its settings, for a training job.

The names a user's own code needs are here, imported on first use (so ``import
hpo2`` and the CLI start fast):

* :class:`Task`, :class:`TaskSettings`, :class:`Split` -- what a task function
  returns and how it declares settings (:mod:`hpo2.tasks.source`);
* :func:`run_study` and :class:`StudyResult` -- a study from Python, as
  ``hpo2 study run`` runs it (:mod:`hpo2.interface.api`);
* :mod:`hpo2.optim` -- every optimizer, ``from_config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hpo2.interface.api import StudyResult, run_study
    from hpo2.tasks.base import Split, Task, TaskSettings

__all__ = ["Split", "StudyResult", "Task", "TaskSettings", "__version__", "run_study"]


def __getattr__(name: str) -> Any:
    """The public names above, imported when first asked for (PEP 562)."""
    if name in ("Task", "TaskSettings", "Split"):
        from hpo2.tasks import base

        return getattr(base, name)
    if name in ("run_study", "StudyResult"):
        from hpo2.interface import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpo2' has no attribute {name!r}")
