"""Linear solvers, line searches and the globalization strategies the second-order optimizers share."""

from hpo2.solvers.cg import (
    DEFAULT_CHECK_EVERY,
    STOP_REASONS,
    CGResult,
    backtrack_schedule,
    cg,
    default_check_every,
    steihaug_cg,
)
from hpo2.solvers.globalization import (
    Armijo,
    FixedStep,
    LineSearch,
    Ray,
    StrongWolfe,
    TrustRegion,
    levenberg_marquardt,
    make_line_search,
)
from hpo2.solvers.host import host_floats
from hpo2.solvers.linesearch import LineSearchResult, armijo_backtracking, strong_wolfe

__all__ = [
    "DEFAULT_CHECK_EVERY",
    "STOP_REASONS",
    "Armijo",
    "CGResult",
    "FixedStep",
    "LineSearch",
    "LineSearchResult",
    "Ray",
    "StrongWolfe",
    "TrustRegion",
    "armijo_backtracking",
    "backtrack_schedule",
    "cg",
    "default_check_every",
    "host_floats",
    "levenberg_marquardt",
    "make_line_search",
    "steihaug_cg",
    "strong_wolfe",
]
