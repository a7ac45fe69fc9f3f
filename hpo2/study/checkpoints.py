"""When a trial reports to the pruner and measures flatness: the checkpoint schedule."""

from __future__ import annotations

import math


def on_checkpoint(index: int, dense: int = 10, growth: float = 1.25) -> bool:
    """Whether evaluation ``index`` (0-based) goes to the pruner and the curvature
    diagnostics: each of the first ``dense``, then those at
    :math:`\\lceil d\\,g^k \\rceil` (``d = dense``, ``g = growth``).

    Every evaluation is logged to MLflow, but ``trial.report`` plus
    ``should_prune`` read every trial's intermediate values from the storage, a
    cost that grows with the number of reports: a seconds budget on a task whose
    epoch is one step (full-batch logistic regression) made thousands of reports
    and spent 95% of the trial's wall time there.  The schedule keeps
    :math:`O(d + \\log_g E)` reports for :math:`E` evaluations, and because it
    depends on the index only, every trial reports the same steps, which is what
    the median and successive-halving pruners compare.
    """
    if index < dense:
        return True
    checkpoint = dense
    while checkpoint < index:
        checkpoint = max(checkpoint + 1, math.ceil(checkpoint * growth))
    return checkpoint == index


def curvature_due(spent_seconds: float, training_seconds: float, share: float) -> bool:
    """Whether a checkpoint may measure flatness: only while the measurements so far
    took at most ``share`` of the trial's time (training plus measuring), so a
    study's trials spend at most about that share on it (one measurement of
    overshoot; the end-of-trial measurement is always taken).  Without the cap a
    3-10 s trial spent a quarter to a half of its time there (BENCHMARKS.md)."""
    return spent_seconds <= share * (training_seconds + spent_seconds)
