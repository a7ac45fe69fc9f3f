"""hpo2's LogEI candidates function (hpo2.study.botorch_candidates): the improvement is
measured from the best observed value, and the local restarts start at the incumbent."""

from __future__ import annotations

import torch
from botorch import optim as botorch_optim

from hpo2.study import botorch_candidates
from hpo2.study.botorch_candidates import LogEICandidates


def _observed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seven points of a smooth 1-d objective (larger is better, best at the observed 0.15) on [0, 0.3] of [0, 1]."""
    x = torch.linspace(0.0, 0.3, 7, dtype=torch.float64).unsqueeze(1)
    return x, 1 - 100 * (x - 0.15) ** 2, torch.tensor([[0.0], [1.0]], dtype=torch.float64)


def test_expected_improvement_over_the_best_value_explores_where_the_model_is_unsure():
    """Around the sampled points the model is certain and nothing beats the best value, so
    EI above best_f = max(y) proposes the unexplored part of the box; EI above the worst
    value would be largest at the incumbent (pure exploitation)."""
    torch.manual_seed(0)
    x, y, bounds = _observed()
    candidate = LogEICandidates()(x, y, None, bounds, None)
    assert candidate.shape == (1, 1)
    assert float(candidate) > 0.45


def test_local_restarts_start_around_the_incumbent(monkeypatch):
    """The acquisition search gets ``num_local`` extra starts within a few ``local_scale`` of the
    best observed point (the real optimize_acqf runs; its starts are recorded on the way)."""
    starts: list[torch.Tensor] = []
    real = botorch_optim.optimize_acqf

    def recording(*args, **kwargs):
        starts.append(kwargs["batch_initial_conditions"])
        return real(*args, **kwargs)

    monkeypatch.setattr(botorch_candidates, "optimize_acqf", recording)
    torch.manual_seed(1)
    x, y, bounds = _observed()
    candidates = LogEICandidates(num_restarts=3, raw_samples=64, num_local=4, local_scale=0.02)
    candidates(x, y, None, bounds, None)
    (initial,) = starts
    assert initial.shape == (3 + 4, 1, 1)
    local = initial[3:].reshape(-1)
    incumbent = float(x[y.argmax()])
    assert float((local - incumbent).abs().max()) < 5 * 0.02
