"""Performance profiles against a hand-computed example (Dolan & Moré 2002)."""

from __future__ import annotations

import math

import pytest

from hpo2.study.profiles import performance_profile

INF = math.inf
# Hand-computed: the fastest per task is 10, 10, 30, 6 and none on p5, so
#   p1: A 1,   B 1.5, C 4      p2: A 2, B 1, C 2      p3: A inf, B 1, C 2
#   p4: A 1,   B inf, C inf    p5: nobody reached the target (inf for all)
TIMES = {
    "A": {"p1": 10.0, "p2": 20.0, "p3": INF, "p4": 6.0, "p5": INF},
    "B": {"p1": 15.0, "p2": 10.0, "p3": 30.0, "p4": INF, "p5": INF},
    "C": {"p1": 40.0, "p2": 20.0, "p3": 60.0, "p5": INF},  # p4 missing: not reached
}
RATIOS = {
    "A": {"p1": 1.0, "p2": 2.0, "p3": INF, "p4": 1.0, "p5": INF},
    "B": {"p1": 1.5, "p2": 1.0, "p3": 1.0, "p4": INF, "p5": INF},
    "C": {"p1": 4.0, "p2": 2.0, "p3": 2.0, "p4": INF, "p5": INF},
}
# rho at tau = 1, 1.5, 2, 4 (5 tasks); ratios exactly on a tau count (r <= tau)
RHO = {"A": [0.4, 0.4, 0.6, 0.6], "B": [0.4, 0.6, 0.6, 0.6], "C": [0.0, 0.0, 0.4, 0.6]}
WINS = {"A": 2, "B": 2, "C": 0}
# AlgoPerf score, tau_max 4: sum of (4 - r) over r <= 4, over 5 tasks x 3
SCORE = {"A": (3 + 2 + 3) / 15, "B": (2.5 + 3 + 3) / 15, "C": (0 + 2 + 2) / 15}


def test_profile_matches_the_hand_computed_example():
    profile = performance_profile(TIMES)
    assert profile.tasks == ("p1", "p2", "p3", "p4", "p5")
    assert profile.ratios == RATIOS
    for o in "ABC":
        assert [profile.rho(o, tau) for tau in (1, 1.5, 2, 4)] == pytest.approx(RHO[o])
        assert profile.wins(o) == WINS[o]
        assert profile.score(o) == pytest.approx(SCORE[o])
    summary = profile.summary()
    assert summary["B"] == pytest.approx({"wins": 2, "rho@1": 0.4, "rho@1.5": 0.6, "rho@2": 0.6, "rho@4": 0.6,
                                          "score": 8.5 / 15, "solved": 0.6})
    assert summary["C"]["solved"] == pytest.approx(0.6)
    assert profile.breakpoints() == [1.0, 1.5, 2.0, 4.0]


def test_score_is_the_normalised_area_under_the_profile():
    """The closed form against a midpoint Riemann sum of rho over [1, 4]."""
    profile = performance_profile(TIMES)
    n = 30_000
    for o in "ABC":
        area = sum(profile.rho(o, 1 + 3 * (i + 0.5) / n) for i in range(n)) * 3 / n
        assert profile.score(o) == pytest.approx(area / 3, abs=1e-4)


def test_bad_times_are_refused():
    with pytest.raises(ValueError, match="must be > 0"):
        performance_profile({"A": {"p": math.nan}})
    with pytest.raises(ValueError, match="must be > 0"):
        performance_profile({"A": {"p": 0.0}, "B": {"p": 1.0}})
    with pytest.raises(ValueError, match="at least one"):
        performance_profile({})
