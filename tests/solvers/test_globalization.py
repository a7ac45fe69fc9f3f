"""The shared globalization objects: line searches by name on a ray, the trust-region
radius rule (N&W Alg. 4.1), Levenberg-Marquardt damping, one-transfer host reads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from hpo2.solvers import (
    Armijo,
    FixedStep,
    StrongWolfe,
    TrustRegion,
    host_floats,
    levenberg_marquardt,
    make_line_search,
)
from tests.host_sync import count_host_syncs


class _QuadraticRay:
    """phi(t) = (t - 3)^2 - 9 as 0-d float64 tensors; phi(0) = 0, phi'(0) = -6."""

    def __init__(self) -> None:
        self.calls = 0

    def value(self, t: float) -> Tensor:
        self.calls += 1
        return torch.tensor((t - 3.0) ** 2 - 9.0, dtype=torch.float64)

    def value_and_slope(self, t: float) -> tuple[Tensor, Tensor]:
        self.calls += 1
        return self.value(t), torch.tensor(2.0 * (t - 3.0), dtype=torch.float64)


def test_line_searches_by_name_on_a_quadratic_ray() -> None:
    assert isinstance(make_line_search("none"), FixedStep)
    assert make_line_search("armijo", c1=0.3, shrink=0.25, max_evals=7) == Armijo(0.3, 0.25, 7)
    assert make_line_search("strong_wolfe", c1=1e-3, c2=0.5) == StrongWolfe(1e-3, 0.5, 20)
    with pytest.raises(ValueError, match="'newton'"):
        make_line_search("newton")  # type: ignore[arg-type]

    ray = _QuadraticRay()
    fixed = FixedStep().search(ray, 0.0, -6.0, 0.7)
    assert (fixed.step, fixed.n_evals, ray.calls) == (0.7, 0, 0) and math.isnan(fixed.value)
    # Armijo from 8: phi(8) = 16 > 0 fails, phi(4) = -8 <= 0 + 1e-4 * 4 * (-6) holds
    armijo = Armijo().search(ray, 0.0, -6.0, 8.0)
    assert (armijo.step, armijo.value, armijo.n_evals, armijo.success) == (4.0, -8.0, 2, True)
    wolfe = StrongWolfe(c2=0.1).search(ray, 0.0, -6.0, 1.0)
    assert wolfe.success and abs(wolfe.slope) <= 0.1 * 6.0  # type: ignore[arg-type]
    assert wolfe.value <= 1e-4 * wolfe.step * -6.0


def test_a_line_search_reads_each_trial_point_once() -> None:
    ray = _QuadraticRay()
    with count_host_syncs() as counter:
        result = StrongWolfe(c2=0.1).search(ray, 0.0, -6.0, 1.0)
    assert counter.total == result.n_evals  # value and slope of a trial cross together


@pytest.mark.parametrize(
    "rho, step_norm, expected_radius, accepted",
    [
        (0.1, 0.4, 0.1, False),  # poor model: shrink to a quarter of the step
        (0.1, 0.0, 0.25, False),  # no step: a quarter of the radius
        (0.5, 1.0, 1.0, True),  # fair: keep
        (0.9, 1.0, 2.0, True),  # good and on the boundary: double
        (0.9, 0.5, 1.0, True),  # good but inside: keep
        (-math.inf, 0.4, 0.1, False),
    ],
)
def test_trust_region_radius_rule(rho: float, step_norm: float, expected_radius: float, accepted: bool) -> None:
    assert TrustRegion().update(1.0, rho, step_norm) == (expected_radius, accepted)


def test_trust_region_caps_floors_and_accepts_above_eta() -> None:
    assert TrustRegion(max_radius=1.5).update(1.0, 0.9, 1.0) == (1.5, True)
    assert TrustRegion().update(1.0, 0.1, 1e-20, floor=1e-12) == (1e-12, False)
    assert TrustRegion(eta=0.6).update(1.0, 0.5, 1.0) == (1.0, False)


def test_levenberg_marquardt_damping() -> None:
    assert levenberg_marquardt(2.0, 0.1) == 3.0
    assert levenberg_marquardt(3.0, 0.9) == pytest.approx(2.0)
    assert levenberg_marquardt(2.0, 0.5) == 2.0
    assert levenberg_marquardt(2.0, math.nan) == 2.0
    assert levenberg_marquardt(2.0, -math.inf, boost=4.0) == 8.0


def test_host_floats_reads_tensors_in_one_transfer_and_keeps_float64() -> None:
    a = torch.tensor(1.0 + 1e-12, dtype=torch.float64)
    b = torch.tensor(2.5, dtype=torch.float32)
    with count_host_syncs() as counter:
        values = host_floats(a, 7, b, torch.tensor(True))
    assert values == [1.0 + 1e-12, 7.0, 2.5, 1.0]
    assert counter.total == 1
    assert host_floats(1, 2.0) == [1.0, 2.0]
