"""Martens' relative-progress rule fires at exactly the iteration the rule names,
checked against an independent textbook CG in NumPy (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpo2.solvers import cg


def _reference_quad_values(a: np.ndarray, b: np.ndarray, n_iter: int) -> list[float]:
    """phi(x_i) = x^T A x / 2 - b^T x for the iterates of plain CG from 0."""
    x, r = np.zeros_like(b), b.copy()
    p, values = r.copy(), [0.0]
    for _ in range(n_iter):
        ap = a @ p
        alpha = (r @ r) / (p @ ap)
        x = x + alpha * p
        r_next = r - alpha * ap
        p = r_next + (r_next @ r_next) / (r @ r) * p
        r = r_next
        values.append(float(0.5 * x @ a @ x - b @ x))
    return values


def _first_firing(values: list[float], eps: float, min_k: int = 10) -> int | None:
    for i in range(1, len(values)):
        k = max(min_k, math.ceil(0.1 * i))
        if i > k and values[i] < 0 and (values[i] - values[i - k]) / values[i] < k * eps:
            return i
    return None


@pytest.mark.parametrize("seed, eps", [(0, 5e-3), (1, 1e-2), (2, 2e-3)])
def test_martens_rule_fires_at_the_first_iteration_that_meets_it(seed: int, eps: float) -> None:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    a = q @ np.diag(np.logspace(-2, 1, 120)) @ q.T  # moderately conditioned: the rule fires before round-off matters
    b = rng.standard_normal(120)
    values = _reference_quad_values(a, b, 119)
    expected = _first_firing(values, eps)
    assert expected is not None and expected > 11
    result = cg(lambda v: torch.from_numpy(a) @ v, torch.from_numpy(b), max_iter=119, tol=0.0, martens_eps=eps)
    assert result.stop_reason == "relative_progress"
    assert result.n_iter == expected
    assert result.quad_value == pytest.approx(values[expected], rel=1e-5)
