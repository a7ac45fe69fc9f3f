"""Performance profiles (Dolan & Moré 2002, "Benchmarking optimization software
with performance profiles", Math. Programming 91(2)), as AlgoPerf scores
training algorithms with them (Dahl et al. 2023, section 4.5).

For optimizers :math:`o` and tasks :math:`p`, :math:`t_{o,p}` is the time the
optimizer's best configuration needs to reach task :math:`p`'s target
(:math:`\\infty` when it never did).  The performance ratio compares it with the
fastest optimizer *on that task*,

.. math:: r_{o,p} = \\frac{t_{o,p}}{\\min_{o'} t_{o',p}},

(:math:`\\infty` when :math:`o` missed the target, and for every optimizer when
none reached it), and the profile of :math:`o` is the fraction of tasks it
solves within a factor :math:`\\tau` of the fastest,

.. math:: \\rho_o(\\tau) = \\frac{1}{|P|}\\,\\big|\\{p : r_{o,p} \\le \\tau\\}\\big|.

:math:`\\rho_o(1)` is the share of tasks where :math:`o` was fastest (ties count
for each) and :math:`\\rho_o(\\tau)` for large :math:`\\tau` the share it solves at
all.  The summary score is AlgoPerf's normalised area under the profile,

.. math:: B_o = \\frac{1}{\\tau_{max} - 1} \\int_1^{\\tau_{max}} \\rho_o(\\tau)\\,d\\tau
              = \\frac{1}{|P|(\\tau_{max} - 1)} \\sum_{p:\\, r_{o,p} \\le \\tau_{max}} (\\tau_{max} - r_{o,p}),

exact because :math:`\\rho_o` is a step function (AlgoPerf uses
:math:`\\tau_{max} = 4`): 1 for an optimizer fastest everywhere, 0 for one never
within :math:`\\tau_{max}` of the fastest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: the ratios the summary table shows rho at
TABLE_TAUS: tuple[float, ...] = (1.0, 1.5, 2.0, 4.0)
#: AlgoPerf's upper limit of the integrated ratio
ALGOPERF_TAU_MAX = 4.0


@dataclass(frozen=True)
class PerformanceProfile:
    """Ratios and profile of each optimizer over a set of tasks.

    Attributes:
        optimizers: the compared optimizers, in the given order.
        tasks: the tasks, in the given order.
        times: ``times[o][p]`` = :math:`t_{o,p}` (``math.inf``: target not reached).
        ratios: ``ratios[o][p]`` = :math:`r_{o,p}`.
        tau_max: the upper limit of :attr:`score`'s integral.
    """

    optimizers: tuple[str, ...]
    tasks: tuple[str, ...]
    times: dict[str, dict[str, float]]
    ratios: dict[str, dict[str, float]]
    tau_max: float = ALGOPERF_TAU_MAX

    def rho(self, optimizer: str, tau: float) -> float:
        """:math:`\\rho_o(\\tau)`: the share of tasks with :math:`r_{o,p} \\le \\tau`."""
        return sum(self.ratios[optimizer][p] <= tau for p in self.tasks) / len(self.tasks)

    def wins(self, optimizer: str) -> int:
        """Tasks where ``optimizer`` reached the target fastest (:math:`r_{o,p} = 1`; ties count for each)."""
        return sum(self.ratios[optimizer][p] == 1.0 for p in self.tasks)

    def score(self, optimizer: str) -> float:
        """AlgoPerf's :math:`B_o`, the normalised area under :math:`\\rho_o` on :math:`[1, \\tau_{max}]`."""
        inside = [r for r in self.ratios[optimizer].values() if r <= self.tau_max]
        return sum(self.tau_max - r for r in inside) / (len(self.tasks) * (self.tau_max - 1.0))

    def breakpoints(self) -> list[float]:
        """Every finite ratio (where some :math:`\\rho_o` steps up), sorted, starting at 1."""
        finite = {r for row in self.ratios.values() for r in row.values() if math.isfinite(r)}
        return sorted(finite | {1.0})

    def summary(self, taus: Sequence[float] = TABLE_TAUS) -> dict[str, dict[str, float]]:
        """Per optimizer: ``wins``, ``rho@<tau>`` for each ``tau``, ``score`` and ``solved``
        (the share of tasks it reached the target on)."""
        out: dict[str, dict[str, float]] = {}
        for o in self.optimizers:
            row: dict[str, float] = {"wins": float(self.wins(o))}
            row.update({f"rho@{tau:g}": self.rho(o, tau) for tau in taus})
            row["score"] = self.score(o)
            row["solved"] = sum(math.isfinite(t) for t in self.times[o].values()) / len(self.tasks)
            out[o] = row
        return out


def performance_profile(
    times: Mapping[str, Mapping[str, float]], tau_max: float = ALGOPERF_TAU_MAX
) -> PerformanceProfile:
    """The profile of ``times[optimizer][task]`` (seconds or gradient-equivalents to
    the target, > 0; ``math.inf`` or a missing entry for "not reached").

    Raises:
        ValueError: no optimizer or no task, a time that is not > 0, or ``tau_max <= 1``.
    """
    optimizers = tuple(times)
    tasks = tuple(dict.fromkeys(p for row in times.values() for p in row))
    if not optimizers or not tasks:
        raise ValueError("a performance profile needs at least one optimizer and one task")
    if not tau_max > 1.0:
        raise ValueError(f"tau_max = {tau_max!r}: must be > 1")
    full = {o: {p: float(times[o].get(p, math.inf)) for p in tasks} for o in optimizers}
    for o, row in full.items():
        for p, t in row.items():
            if not t > 0:  # NaN, negative or zero (an evaluation comes after at least one step)
                raise ValueError(f"time to target of {o} on {p} = {t!r}: must be > 0, or inf for not reached")
    ratios: dict[str, dict[str, float]] = {o: {} for o in optimizers}
    for p in tasks:
        fastest = min(full[o][p] for o in optimizers)  # over optimizers, for this task
        for o in optimizers:
            t = full[o][p]
            ratios[o][p] = t / fastest if math.isfinite(t) else math.inf
    return PerformanceProfile(optimizers, tasks, full, ratios, tau_max)
