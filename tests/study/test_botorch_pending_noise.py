"""hpo2's BoTorch candidates (hpo2.study.botorch_candidates), issue 25: pending points push a proposal away from
them, and a noisy objective is modelled as noisy (inferred noise, qLogNEI), a deterministic one is not."""

from __future__ import annotations

import math

import torch
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement

from hpo2.study.botorch_candidates import NOISE_SHARE, LogEICandidates

BOUNDS = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)


def _data(noise: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bowl with its maximum at (0.3, 0.6), plus ``noise`` x N(0, 1)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    y = -((x - torch.tensor([0.3, 0.6], dtype=torch.float64)) ** 2).sum(-1, keepdim=True)
    return x, y + noise * torch.randn(n, 1, generator=generator, dtype=torch.float64)


def test_a_pending_point_pushes_the_next_proposal_away_from_it():
    x, y = _data(noise=0.0, n=10)
    candidates = LogEICandidates(num_restarts=4, raw_samples=128, num_local=2)
    torch.manual_seed(1)
    first = candidates(x, y, None, BOUNDS, None)
    torch.manual_seed(1)
    beside = candidates(x, y, None, BOUNDS, first)  # the first proposal is running elsewhere
    assert math.dist(first.flatten().tolist(), beside.flatten().tolist()) > 0.05  # measured 0.17
    pending = candidates.acquisition(candidates.fit(x, y), x, y, first)
    assert isinstance(pending, qLogExpectedImprovement) and pending.X_pending is not None


def test_a_noisy_objective_gets_an_inferred_noise_and_qlognei_a_deterministic_one_a_tiny_known_noise():
    x, y = _data(noise=0.02, n=24)
    noisy, exact = LogEICandidates(noisy=True), LogEICandidates()
    noisy_model, exact_model = noisy.fit(x, y), exact.fit(x, y)
    # noise variance in standardized units: the inferred one finds the seed noise (0.02^2 of a spread of ~0.1^2)
    inferred = float(noisy_model.likelihood.noise.detach().mean())
    known = float(exact_model.likelihood.noise.detach().mean())
    assert known < 10 * NOISE_SHARE < 1e-4 < inferred
    assert isinstance(noisy.acquisition(noisy_model, x, y, None), qLogNoisyExpectedImprovement)
    with torch.no_grad():  # the deterministic model goes through every (noisy) point; the noisy one smooths
        assert (exact_model.posterior(x).mean - y).abs().max() < 1e-3 * y.std()
        assert (noisy_model.posterior(x).mean - y).abs().max() > 0.01
