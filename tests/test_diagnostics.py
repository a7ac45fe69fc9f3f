"""Flatness diagnostics (hpo2.train.diagnostics) against dense float64 references: the
top Hessian eigenvalue and trace against the explicit Hessian, m-sharpness against
a direct computation, the generalization gap against its definition."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from hpo2.tasks.base import accuracy
from hpo2.train.diagnostics import flatness_summary, m_sharpness
from tests.conftest import make_mlp


def _problem(seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    model = make_mlp(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(50, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (50,), generator=gen)
    return model, x, y


def _flat_loss(model: nn.Module, x: Tensor, y: Tensor):  # type: ignore[no-untyped-def]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(flat: Tensor) -> Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[name] = flat[offset : offset + n].view(shape)
            offset += n
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return loss


def test_flatness_equals_the_dense_hessian_and_the_definitions(seed: int) -> None:
    model, x, y = _problem(seed)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hessian = torch.autograd.functional.hessian(_flat_loss(model, x, y), w)
    eigenvalues = torch.linalg.eigvalsh(hessian)
    probes = 200
    s = flatness_summary(model, nn.CrossEntropyLoss(), accuracy, x, y, valid_metric=0.25, higher_is_better=True,
                         curvature_samples=len(x), lanczos_iter=w.numel(), trace_probes=probes, seed=seed)  # fmt: skip
    assert s["top_eigenvalue"] == pytest.approx(float(eigenvalues[-1]), rel=1e-6)
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    std = math.sqrt(2 * float((off_diagonal**2).sum()) / probes)  # Rademacher Hutchinson variance
    assert abs(s["hessian_trace"] - float(torch.trace(hessian))) < 4 * std + 1e-12
    train_metric = accuracy(model(x), y)
    assert s["train_metric"] == pytest.approx(train_metric)
    assert s["generalization_gap"] == pytest.approx(train_metric - 0.25)
    lower = flatness_summary(model, nn.CrossEntropyLoss(), None, x, y, valid_metric=2.0, higher_is_better=False,
                             curvature_samples=8, lanczos_iter=3, trace_probes=1)  # fmt: skip
    assert lower["train_metric"] == lower["train_loss"]
    assert lower["generalization_gap"] == pytest.approx(2.0 - lower["train_loss"])


@pytest.mark.parametrize("m", [16, 50])
def test_m_sharpness_equals_a_direct_computation(m: int, seed: int) -> None:
    model, x, y = _problem(seed)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    rho = 0.05
    values = []
    for start in range(0, len(x), m):  # chunks of m (the last one shorter), equally weighted
        loss = _flat_loss(model, x[start : start + m], y[start : start + m])
        g = torch.func.grad(loss)(w)
        values.append(float(loss(w + rho * g / g.norm()) - loss(w)))
    expected = sum(values) / len(values)
    got = m_sharpness(model, nn.CrossEntropyLoss(), x, y, rho=rho, m=m)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-14)
    assert got > 0
    assert model.training  # mode restored
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)  # parameters restored exactly


@pytest.mark.slow  # a whole study or a server
def test_a_study_logs_flatness_per_trial_searches_sam_and_plots_sharpness(tmp_path) -> None:
    import optuna
    import yaml
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    from hpo2.interface.report import sharpness_figure
    from hpo2.optim import SAM, from_config
    from hpo2.study.config import load_study_config
    from hpo2.study.results import export_config
    from hpo2.study.runner import StudyRunner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "task": "logreg_breast_cancer", "budget": {"epochs": 12}, "n_trials": 3, "report": False,
        "confirm": False,
        "pruner": {"name": "none"}, "sampler": {"name": "random", "seed": 0},
        "optimizers": [{"name": "sgd", "sam": {"rho": [0.01, 0.5], "adaptive": True}}, "adam"],
    }))  # fmt: skip
    config, study_file = load_study_config(path)
    study = StudyRunner(config, study_file).run()
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for t in trials:
        flat = t.user_attrs["hpo2.flatness"]
        run_id = t.user_attrs["hpo2.mlflow_run_id"]
        # 12 evaluations: the last is not a pruner checkpoint, so this is the end-of-trial measurement
        assert flat["step"] == max(m.step for m in client.get_metric_history(run_id, "valid_metric"))
        assert flat["valid_metric"] == pytest.approx(t.value)
        assert all(
            math.isfinite(flat[k]) for k in ("top_eigenvalue", "hessian_trace", "m_sharpness", "generalization_gap")
        )
        assert flat["seconds"] > 0
        history = client.get_metric_history(run_id, "curvature.m_sharpness")
        assert history and history[-1].value == pytest.approx(flat["m_sharpness"])
        if t.params["optimizer"] == "sgd":
            assert 0.01 <= t.params["sgd.sam.rho"] <= 0.5
            exported = export_config(config, t)
            assert exported["optimizer"]["settings"]["sam"] == {"rho": t.params["sgd.sam.rho"], "adaptive": True}
            built = from_config(exported, [torch.nn.Parameter(torch.zeros(2))])
            assert isinstance(built, SAM) and built.settings.adaptive
    figure = sharpness_figure(study)
    assert figure is not None
    assert sorted(tr.name for tr in figure.data) == sorted({t.params["optimizer"] for t in trials})
    assert sum(len(tr.x) for tr in figure.data) == 3


def test_checkpoint_flatness_stays_within_its_share_of_trial_time() -> None:
    from hpo2.study.checkpoints import curvature_due

    assert curvature_due(0.0, 0.0, 0.1)  # the first checkpoint always measures
    assert not curvature_due(1.0, 5.0, 0.1)  # 1 s of 6 s is 17% > 10%
    assert curvature_due(1.0, 9.0, 0.1)  # 1 s of 10 s is 10%
    assert not curvature_due(1.0, 8.9, 0.1)
    assert curvature_due(1.0, 1.0, 0.5)
