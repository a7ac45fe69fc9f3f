"""How the CLI and the report show a study's confirmation stage (:mod:`hpo2.study.confirm`):
one row per finalist (mean ± std and 95% interval over its new seeds, its costs to the
target, named with the target), and the lines that name the winner, its ties and the
recommended configuration with the reason."""

from __future__ import annotations

import math

from hpo2.study.confirm import Confirmation, Confirmed


def _cost(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "not on all seeds"


def _role(outcome: Confirmation, config: Confirmed) -> str:
    """What the finalist is: recommended, winner, tie, or why it cannot win."""
    roles = []
    if config is outcome.recommended:
        roles.append("recommended")
    if config is outcome.winner:
        roles.append("best mean")
    if config in outcome.ties:
        roles.append("tie")
    if config.failed:
        roles.append("cannot win: " + "; ".join(config.failed))
    elif config.finished < config.planned:
        roles.append(f"{config.finished} of {config.planned} runs done")
    return ", ".join(roles)


def confirmation_rows(outcome: Confirmation) -> list[dict[str, str]]:
    """One row per finalist, best mean first; the costs are means over its seeds."""
    return [{
        "optimizer": c.optimizer,
        "trial": str(c.trial.number),
        "mean ± std (95% CI)": c.text(),
        "time to target (s)": _cost(c.cost[0]),
        "grad-eq to target": _cost(c.cost[1]),
        "grad-eq total": _cost(c.cost[2]),
        "role": _role(outcome, c),
    } for c in outcome.configs]  # fmt: skip


def confirmation_title(outcome: Confirmation) -> str:
    """What the table shows: the metric and the seeds' count (the lines below name the target)."""
    return f"confirmation: {outcome.metric} on {len(outcome.seeds)} new seeds, best mean first"


def confirmation_lines(outcome: Confirmation, rerun: str) -> list[str]:
    """The stage's progress, and once done the recommendation with its reason; ``rerun`` is
    the command that finishes an incomplete stage."""
    seeds = ", ".join(str(s) for s in outcome.seeds)
    lines = [f"confirmation: {outcome.finished} of {outcome.planned} runs done, seeds {seeds} (new: not the search's); "
             f"costs to the target {outcome.target}"]
    if not outcome.done:
        lines.append(f"confirmation incomplete: `{rerun}` runs the {outcome.planned - outcome.finished} missing runs")
    elif outcome.recommended is None:
        lines.append("confirmation: no finalist completed every seed; the search's best stands unconfirmed")
    else:
        pick = outcome.recommended
        lines.append(f"recommended: trial {pick.trial.number} {pick.optimizer} = {pick.text()}: {outcome.reason}")
    return lines
