"""Linear solvers and line searches the second-order optimizers share."""

from hpo2.solvers.cg import DEFAULT_CHECK_EVERY, STOP_REASONS, CGResult, backtrack_schedule, cg, steihaug_cg
from hpo2.solvers.linesearch import LineSearchResult, armijo_backtracking, strong_wolfe

__all__ = [
    "DEFAULT_CHECK_EVERY",
    "STOP_REASONS",
    "CGResult",
    "LineSearchResult",
    "armijo_backtracking",
    "backtrack_schedule",
    "cg",
    "steihaug_cg",
    "strong_wolfe",
]
