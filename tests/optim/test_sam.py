"""SAM / ASAM (hpo2.optim.sam): the ascent step against its formula, the update
against an independent two-gradient computation, the closure-based meaning for
curvature methods (Newton on a quadratic), the flat-minimum bias, counting,
config and state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from hpo2.errors import SettingsError
from hpo2.optim import SAM, NewtonCG, from_config
from hpo2.optim.costs import CostMeter
from hpo2.optim.sam import ascent_step
from tests.problems import Quadratic


def _params(seed: int) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(3, 4, dtype=torch.float64, generator=gen)),
            nn.Parameter(torch.randn(5, dtype=torch.float64, generator=gen))]  # fmt: skip


def _loss(params: list[Tensor]) -> Tensor:
    return (params[0].sin() ** 2).sum() * params[1].exp().sum() + (params[1] ** 3).sum()


@pytest.mark.parametrize("adaptive", [False, True])
def test_ascent_step_matches_the_formula(adaptive: bool, seed: int) -> None:
    params = _params(seed)
    grads = list(torch.autograd.grad(_loss(params), params))
    rho, eta = 0.3, 0.05
    g = torch.cat([x.reshape(-1) for x in grads])
    weight, bias = params[0].detach().reshape(-1), params[1].detach()
    # Kwon et al. eq. 8 with T = |w| + eta on the weight matrix and T = I on the 1-d bias; Foret et al. eq. 2: T = I
    t = torch.cat([weight.abs() + eta, torch.ones_like(bias)]) if adaptive else torch.ones(g.numel(), dtype=g.dtype)
    expected = rho * t**2 * g / torch.linalg.vector_norm(t * g)
    got = torch.cat([e.reshape(-1) for e in ascent_step(params, grads, rho, adaptive, eta)])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    if not adaptive:
        assert float(got.norm()) == pytest.approx(rho, rel=1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_sgd_update_is_the_gradient_at_the_perturbed_point(adaptive: bool, seed: int) -> None:
    params = _params(seed)
    w0 = [p.detach().clone() for p in params]
    lr, rho = 0.1, 0.2
    opt = SAM(torch.optim.SGD(params, lr=lr), rho=rho, adaptive=adaptive, eta=0.01)
    opt.step(lambda: _loss(params))
    # independent: perturb by hand, differentiate there, step from w0
    start = [w.clone().requires_grad_(True) for w in w0]
    g = torch.autograd.grad(_loss(start), start)
    t = [w.abs() + 0.01 if adaptive and w.dim() > 1 else torch.ones_like(w) for w in w0]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    perturbed = [(w + rho * ti**2 * gi / norm).requires_grad_(True) for w, ti, gi in zip(w0, t, g)]
    g_sam = torch.autograd.grad(_loss(perturbed), perturbed)
    for p, w, gs in zip(params, w0, g_sam):
        torch.testing.assert_close(p.detach(), w - lr * gs, rtol=1e-12, atol=1e-14)
    d = opt.diagnostics
    assert d["n_grad"] == 2 and d["grad_equivalents"] == 2.0
    assert d["loss"] == pytest.approx(float(_loss(w0)))
    assert d["sam_perturbed_loss"] == pytest.approx(float(_loss([x.detach() for x in perturbed])))


def test_sam_newton_on_a_quadratic_steps_from_w_with_the_perturbed_newton_step() -> None:
    """Closure-based meaning: Newton's step computed at w + eps lands on x* from there,
    so applied from w it lands on x* - eps (a closed form)."""
    model = Quadratic(6, seed=3, cond=10.0)
    w0 = model.theta.detach().clone()
    g = model.a @ w0 - model.b
    eps = 0.5 * g / g.norm()
    newton = NewtonCG(model.parameters(), damping=0.0, cg_tol=1e-12, cg_max_iter=50)
    newton.costs = CostMeter(calibrate=False)  # nominal prices: SAM's gradient on top of Newton's counted work
    opt = SAM(newton, rho=0.5)
    opt.step(model)
    torch.testing.assert_close(model.theta.detach(), model.minimizer() - eps, rtol=1e-8, atol=1e-10)
    d = opt.diagnostics
    assert d["n_grad"] == 2 and d["n_hvp"] >= 1
    assert d["grad_equivalents"] == pytest.approx(2 + d["n_hvp"] + d["n_loss"] / 3)


def _scale_invariant(w: Tensor) -> Tensor:
    """f(a, b) = (1 - ab)^2 / 2: minima on ab = 1 with top Hessian eigenvalue a^2 + b^2,
    sharp far out, flattest (2) at a = b = 1."""
    return 0.5 * (1 - w[0] * w[1]) ** 2


def _top_eigenvalue(w: Tensor) -> float:
    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(_scale_invariant, w.detach()))[-1])


def test_sam_ends_in_the_flat_minimum_where_sgd_ends_in_a_sharp_one() -> None:
    ends = {}
    for rho in (None, 0.2):
        w = nn.Parameter(torch.tensor([3.0, 0.1], dtype=torch.float64))
        sgd = torch.optim.SGD([w], lr=0.05)
        opt = sgd if rho is None else SAM(sgd, rho=rho)
        for _ in range(2000):
            if rho is None:
                sgd.zero_grad()
                _scale_invariant(w).backward()
                sgd.step()
            else:
                opt.step(lambda w=w: _scale_invariant(w))
        assert float(_scale_invariant(w.detach())) < 1e-4  # both at a minimum
        ends[rho] = _top_eigenvalue(w)
    assert ends[None] > 9.0  # SGD: the sharp end where it first reached ab = 1
    assert ends[0.2] < 2.05  # SAM: the flattest minimum (eigenvalue 2)


def test_from_config_wraps_every_optimizer_and_counts_the_extra_gradient() -> None:
    model = nn.Linear(3, 1).double()
    opt = from_config(
        {"name": "adam", "settings": {"lr": 0.01, "sam": {"rho": 0.1, "adaptive": True}}}, model.parameters()
    )
    assert isinstance(opt, SAM) and isinstance(opt.base, torch.optim.Adam) and opt.settings.adaptive
    assert isinstance(from_config({"name": "sophia", "settings": {"sam": True}}, model.parameters()), SAM)
    assert not isinstance(from_config({"name": "sgd", "settings": {"sam": False}}, model.parameters()), SAM)
    with pytest.raises(SettingsError, match=r"optimizer\.settings\.sam\.rho"):
        from_config({"name": "sgd", "settings": {"sam": {"rho": -1}}}, model.parameters())
    with pytest.raises(SettingsError, match="unknown setting.*radius"):
        from_config({"name": "sgd", "settings": {"sam": {"radius": 1}}}, model.parameters())


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)

    def build(model: nn.Module) -> SAM:
        return from_config({"name": "adam", "settings": {"lr": 0.05, "sam": {"rho": 0.1}}}, model.parameters())  # type: ignore[return-value]

    first = nn.Linear(3, 1).double()
    second = nn.Linear(3, 1).double()
    opt1 = build(first)
    for _ in range(3):
        opt1.step(lambda: nn.functional.mse_loss(first(x), y))
    second.load_state_dict(first.state_dict())
    opt2 = build(second)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))  # as through torch.save: no shared step tensors
    assert opt2.base.state_dict()["state"][0]["step"] == 3
    for model, opt in ((first, opt1), (second, opt2)):
        opt.step(lambda model=model: nn.functional.mse_loss(model(x), y))
    for p, q in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_study_file_sam_entry_makes_rho_a_search_dimension() -> None:
    import optuna
    from pydantic import ValidationError

    from hpo2.optim.settings import Choice, FloatRange
    from hpo2.study.config import StudyConfig
    from hpo2.study.space import SearchSpace

    config = StudyConfig(name="s", task="digits_mlp", optimizers=[
        {"name": "sgd", "sam": {"rho": [0.02, 0.4], "adaptive": True}}, {"name": "newton_cg", "sam": True},
        "adam"])  # fmt: skip
    space = SearchSpace(config)
    assert space.optimizers["sgd"].dimensions["sam.rho"] == FloatRange(0.02, 0.4, log=True)
    assert space.optimizers["sgd"].fixed == {"sam.adaptive": True}
    assert isinstance(space.optimizers["newton_cg"].dimensions["sam.adaptive"], Choice)
    assert not any(k.startswith("sam.") for k in space.optimizers["adam"].dimensions)
    assert space.optimizers["sgd"].default_params()["sgd.sam.rho"] == 0.05  # Foret et al.'s default, enqueued first
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        name, settings = space.suggest(study.ask())
        seen.add(name)
        if name == "sgd":
            assert settings["sam"]["adaptive"] is True and 0.02 <= settings["sam"]["rho"] <= 0.4
            assert isinstance(from_config({"name": name, "settings": settings}, [nn.Parameter(torch.zeros(1))]), SAM)
        elif name == "adam":
            assert "sam" not in settings
    assert seen == {"sgd", "newton_cg", "adam"}
    for bad, message in [({"rho": [0.5, 0.1]}, "sam.rho = \\[0.5, 0.1\\]: give \\[low, high\\]"),
                         ({"rho": [0.0, 0.1]}, r"low = 0.0 is not a valid rho"),
                         ({"eta": [0.1, 0.2]}, "sam.eta .* not searchable"),
                         ({"radius": 0.1}, "sam.radius: unknown sam setting"), ({"rho": -1.0}, "sam.rho")]:  # fmt: skip
        with pytest.raises(ValidationError, match=message):
            StudyConfig(name="s", task="digits_mlp", optimizers=[{"name": "sgd", "sam": bad}])


@pytest.mark.parametrize("base", ["sgd", "newton_cg"])
def test_a_nonfinite_perturbed_point_leaves_w_exactly(base: str) -> None:
    """The ascent lands where the loss is not finite: no step, w unchanged bit for bit."""
    w = nn.Parameter(torch.tensor([0.5, -0.3], dtype=torch.float64))
    opt = from_config({"name": base, "settings": {"sam": {"rho": 1.0}}}, [w])
    before = w.detach().clone()

    def loss() -> Tensor:  # finite with a finite gradient at w, NaN once ||w|| > 0.9 (the ascent goes outward)
        r2 = (w**2).sum()
        return r2 - torch.log(0.81 - r2)

    opt.step(loss)
    assert opt.diagnostics["status"].startswith("nonfinite")
    assert torch.equal(w.detach(), before)
