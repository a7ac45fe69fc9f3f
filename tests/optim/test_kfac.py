"""K-FAC against dense float64 references: Kronecker factors from explicit loops
over samples and positions (MLP and CNN, empirical and sampled Fisher), the
pi-damped Kronecker solve with KL-clipping, the exact Gauss-Newton solve of a
linear layer with MSE, the Adam fallback, and honest gradient counts."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hpo2.optim import KFAC, BatchClosure
from hpo2.optim.kfac import LM_INTERVAL, LM_OMEGA
from tests.reference import dense_hessian


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3, bias=False)).double()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 3)
    ).double()


def _patches(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """(N, T, C kh kw) patches by explicit loops over output positions (not unfold)."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    rows = (padded.shape[2] - kh) // sh + 1
    cols = (padded.shape[3] - kw) // sw + 1
    out = [
        padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(x.shape[0], -1)
        for i in range(rows)
        for j in range(cols)
    ]
    return torch.stack(out, dim=1)


def _reference_factors(
    model: nn.Module, x: Tensor, labels: Tensor, optimized: list[Tensor] | None = None
) -> list[tuple[Tensor, Tensor]]:
    """A = 1/N sum_{n,t} a a^T (bias coordinate appended when the bias is among ``optimized``,
    default all), G = 1/(N T) sum_{n,t} g g^T with g = d(loss of sample n alone)/d(layer output),
    one backward per sample."""
    biased = {id(p) for p in (model.parameters() if optimized is None else optimized)}
    layers = [m for m in model if isinstance(m, nn.Linear | nn.Conv2d)]
    sums = [None] * len(layers)
    for n in range(x.shape[0]):
        h, outputs, inputs = x[n : n + 1], [], []
        for module in model:
            if module in layers:
                inputs.append(h)
                h = module(h)
                h.retain_grad()
                outputs.append(h)
            else:
                h = module(h)
        F.cross_entropy(h, labels[n : n + 1]).backward()
        for i, (module, a_in, s) in enumerate(zip(layers, inputs, outputs)):
            if isinstance(module, nn.Conv2d):
                a, g = _patches(a_in, module)[0], s.grad[0].reshape(s.shape[1], -1).T
            else:
                a, g = a_in, s.grad
            if module.bias is not None and id(module.bias) in biased:
                a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], dim=1)
            aa, gg = a.T @ a, g.T @ g / g.shape[0]
            sums[i] = (aa, gg) if sums[i] is None else (sums[i][0] + aa, sums[i][1] + gg)
    return [(aa / x.shape[0], gg / x.shape[0]) for aa, gg in sums]


def _data(kind: str) -> tuple[nn.Module, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    if kind == "mlp":
        return _mlp(), torch.randn(12, 4, dtype=torch.float64, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    return _cnn(), torch.randn(6, 2, 5, 5, dtype=torch.float64, generator=gen), torch.randint(0, 3, (6,), generator=gen)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("fisher", ["empirical", "sampled"])
def test_factors_equal_explicit_per_sample_loops(kind, fisher):
    model, x, y = _data(kind)
    if fisher == "sampled":  # the labels K-FAC draws with its seeded generator
        gen = torch.Generator().manual_seed(0)
        labels = torch.multinomial(torch.softmax(model(x).detach(), dim=-1), 1, generator=gen).view(-1)
    else:
        labels = y
    reference = _reference_factors(copy.deepcopy(model), x, labels)
    opt = KFAC(model.parameters(), fisher=fisher, seed=0)
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    weights = [m.weight for m in model if isinstance(m, nn.Linear | nn.Conv2d)]
    for weight, (a_ref, g_ref) in zip(weights, reference):
        torch.testing.assert_close(opt.state[weight]["A"], a_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[weight]["G"], g_ref, rtol=1e-10, atol=1e-12)
    assert opt.diagnostics["n_grad"] == (2 if fisher == "sampled" else 1)


def _pi_damped_solve(a: Tensor, g: Tensor, grad: Tensor, damping: float) -> Tensor:
    """((A + pi sqrt(gamma) I) (x) (G + sqrt(gamma)/pi I))^{-1} vec(grad) as a dense solve, reshaped."""
    pi = ((torch.trace(a) / a.shape[0]) / (torch.trace(g) / g.shape[0])).sqrt()
    damped = torch.kron(a + pi * damping**0.5 * torch.eye(a.shape[0], dtype=a.dtype),
                        g + damping**0.5 / pi * torch.eye(g.shape[0], dtype=g.dtype))
    # column-wise vec: (A (x) G) vec(X) = vec(G X A^T)
    return torch.linalg.solve(damped, grad.T.reshape(-1)).reshape(grad.shape[1], grad.shape[0]).T


def test_direction_is_the_pi_damped_kronecker_solve_scaled_by_the_kl_clip():
    model, x, y = _data("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    lr, damping, kappa = 0.5, 0.3, 1e-4
    opt = KFAC(model.parameters(), lr=lr, damping=damping, kl_clip=kappa, momentum=0.0, fisher="empirical")
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    w1, b1, w2 = list(model.parameters())
    g1 = torch.cat([w1.grad, b1.grad[:, None]], dim=1)
    directions, vg = [], 0.0
    for weight, grad in [(w1, g1), (w2, w2.grad)]:
        v = _pi_damped_solve(opt.state[weight]["A"], opt.state[weight]["G"], grad, damping)
        directions.append(v)
        vg += float((v * grad).sum()) * lr**2
    nu = min(1.0, (kappa / vg) ** 0.5)
    assert nu < 1 and opt.diagnostics["kl_scale"] == pytest.approx(nu, rel=1e-10)
    expected = [
        before[0] - lr * nu * directions[0][:, :-1],
        before[1] - lr * nu * directions[0][:, -1],
        before[2] - lr * nu * directions[1],
    ]
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("how", ["frozen", "not_given"])
def test_a_bias_that_is_not_optimized_leaves_a_weight_only_block(how: str) -> None:
    """A frozen bias, or one left out of the optimizer's parameters, carries no homogeneous
    coordinate: A = E[a a^T] on the weight's inputs alone, and the weight steps by the
    pi-damped solve of that block (it used to crash on a (in + 1)-sized A)."""
    model, x, y = _data("mlp")
    w1, b1, w2 = list(model.parameters())
    if how == "frozen":
        b1.requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    reference = _reference_factors(copy.deepcopy(model), x, y, optimized=[w1, w2])
    lr, damping = 0.5, 0.3
    opt = KFAC([w1, w2], lr=lr, damping=damping, kl_clip=0.0, momentum=0.0, fisher="empirical")
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    assert reference[0][0].shape == (4, 4)
    for i, (weight, (a_ref, g_ref)) in enumerate(zip([w1, w2], reference)):
        torch.testing.assert_close(opt.state[weight]["A"], a_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[weight]["G"], g_ref, rtol=1e-10, atol=1e-12)
        expected = before[2 * i] - lr * _pi_damped_solve(a_ref, g_ref, weight.grad, damping)
        torch.testing.assert_close(weight.detach(), expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(b1.detach(), before[1]) and opt.diagnostics["fallback_params"] == 0


def test_a_frozen_weight_leaves_its_optimized_bias_to_the_fallback() -> None:
    model, x, y = _data("mlp")
    w1, b1, w2 = list(model.parameters())
    w1.requires_grad_(False)
    opt = KFAC([b1, w2], adam_lr=0.01)
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    assert opt.diagnostics["kfac_layers"] == 1 and opt.diagnostics["fallback_params"] == 1
    assert set(opt.state_dict()["state"]) == {0, 1}  # every state entry is one of the optimizer's parameters


def test_second_step_averages_the_factors_and_carries_clipped_momentum():
    """Two steps on two batches: A_2 = d A(batch 1) + (1 - d) A(batch 2) (the EMA's weights, not
    swapped), and the momentum buffer b_2 = mu b_1 + nu_2 V_2 with the KL-clip factor nu_2 < 1."""
    model, x, y = _data("mlp")
    gen = torch.Generator().manual_seed(5)
    x2, y2 = torch.randn(12, 4, dtype=torch.float64, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    lr, damping, kappa, mu, decay = 0.5, 0.3, 1e-4, 0.7, 0.8
    opt = KFAC(model.parameters(), lr=lr, damping=damping, kl_clip=kappa, momentum=mu, stat_decay=decay,
               fisher="empirical", cov_update_every=1, inverse_update_every=1)
    first = _reference_factors(copy.deepcopy(model), x, y)
    p0 = [p.detach().clone() for p in model.parameters()]
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    second = _reference_factors(copy.deepcopy(model), x2, y2)
    p1 = [p.detach().clone() for p in model.parameters()]
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x2, y2))
    w1, b1, w2 = list(model.parameters())
    factors = []
    for weight, (a1, g1), (a2, g2) in zip([w1, w2], first, second):
        a, g = (decay * a1 + (1 - decay) * a2).detach(), (decay * g1 + (1 - decay) * g2).detach()
        torch.testing.assert_close(opt.state[weight]["A"], a, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt.state[weight]["G"], g, rtol=1e-10, atol=1e-12)
        factors.append((a, g))
    grads = [torch.cat([w1.grad, b1.grad[:, None]], dim=1), w2.grad]
    directions = [_pi_damped_solve(a, g, grad, damping) for (a, g), grad in zip(factors, grads)]
    nu = min(1.0, (kappa / (lr**2 * sum(float((v * grad).sum()) for v, grad in zip(directions, grads)))) ** 0.5)
    assert nu < 1
    v = [directions[0][:, :-1], directions[0][:, -1], directions[1]]
    for p, before, start, d in zip(model.parameters(), p1, p0, v):
        buffer = mu * (start - before) / lr + nu * d
        torch.testing.assert_close(p.detach(), before - lr * buffer, rtol=1e-9, atol=1e-12)


def test_weight_decay_is_added_to_the_gradient_and_to_the_damping():
    """(F + (gamma + eta) I)^{-1} (grad + eta W) in factored form: the decay's own curvature eta I
    is part of the damped matrix (Martens & Grosse 2015: gamma = sqrt(lambda + eta))."""
    model, x, y = _data("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    lr, damping, wd = 0.5, 0.3, 0.1
    opt = KFAC(model.parameters(), lr=lr, damping=damping, kl_clip=0.0, momentum=0.0, weight_decay=wd,
               fisher="empirical")
    opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
    w1, b1, w2 = list(model.parameters())
    decayed = [torch.cat([w1.grad + wd * before[0], (b1.grad + wd * before[1])[:, None]], dim=1),
               w2.grad + wd * before[2]]
    v = [_pi_damped_solve(opt.state[w]["A"], opt.state[w]["G"], g, damping + wd) for w, g in zip([w1, w2], decayed)]
    for p, start, d in zip(model.parameters(), before, [v[0][:, :-1], v[0][:, -1], v[1]]):
        torch.testing.assert_close(p.detach(), start - lr * d, rtol=1e-9, atol=1e-12)


def test_linear_layer_with_mse_steps_to_the_exact_gauss_newton_solve():
    """One linear layer, MSE over D = 2 outputs: the Gauss-Newton matrix is exactly
    A (x) (2/D) I; sampled Gaussian labels give G -> (2/D) I as N grows."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = nn.Linear(4, 2).double()
    x = torch.randn(4000, 4, dtype=torch.float64, generator=gen) + 0.5
    y = torch.randn(4000, 2, dtype=torch.float64, generator=gen)
    loss_fn = nn.MSELoss()
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gn = dense_hessian(model, loss_fn, x, y)  # = Gauss-Newton: the loss is quadratic in the parameters
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))])
    newton = -torch.linalg.solve(gn, grad)
    opt = KFAC(model.parameters(), lr=1.0, damping=1e-12, kl_clip=0.0, momentum=0.0, fisher="sampled")
    opt.step(BatchClosure(model, loss_fn, x, y))
    step = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - theta0
    assert float((step - newton).norm() / newton.norm()) < 0.05


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_quadratic_model_rule_takes_the_exact_two_by_two_minimizer_and_sees_rho_one(weight_decay: float) -> None:
    """One linear layer with MSE: the loss is quadratic and the Gauss-Newton matrix H exact.
    Each step is c_1 Delta + c_2 delta_0 with c = -(V'(H + (lambda + eta) I) V)^{-1} V' grad h
    (Martens & Grosse 2015 sec. 7; an independent dense float64 solve), and at step 5 the model
    without lambda predicts the change exactly: rho = 1, so lambda drops by omega (sec. 6.5)."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = nn.Linear(3, 2).double()
    x = torch.randn(40, 3, dtype=torch.float64, generator=gen)
    y = torch.randn(40, 2, dtype=torch.float64, generator=gen)
    loss_fn = nn.MSELoss()
    hessian = dense_hessian(model, loss_fn, x, y) + weight_decay * torch.eye(8, dtype=torch.float64)
    lam = 0.5
    opt = KFAC(model.parameters(), step_rule="quadratic_model", damping=lam, weight_decay=weight_decay,
               fisher="empirical", cov_update_every=1, inverse_update_every=1)
    weight, bias = list(model.parameters())

    def flat() -> Tensor:
        return torch.cat([weight.detach().reshape(-1), bias.detach()])

    previous = None
    for _ in range(LM_INTERVAL):
        theta = flat()
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(model(x), y), [weight, bias])])
        grad = grad + weight_decay * theta
        opt.step(BatchClosure(model, loss_fn, x, y))
        matrix_grad = torch.cat([weight.grad, bias.grad[:, None]], dim=1) + weight_decay * torch.cat(
            [theta[:6].reshape(2, 3), theta[6:, None]], dim=1)
        v = _pi_damped_solve(opt.state[weight]["A"], opt.state[weight]["G"], matrix_grad, lam + weight_decay)
        vectors = torch.stack([-torch.cat([v[:, :-1].reshape(-1), v[:, -1]])] + ([previous] if previous is not None
                                                                                  else []), dim=1)
        c = -torch.linalg.solve(vectors.T @ (hessian + lam * torch.eye(8, dtype=torch.float64)) @ vectors,
                                vectors.T @ grad)
        torch.testing.assert_close(flat() - theta, vectors @ c, rtol=1e-8, atol=1e-12)
        assert opt.diagnostics["alpha"] == pytest.approx(float(c[0]), rel=1e-8)
        assert opt.diagnostics["mu"] == pytest.approx(float(c[1]) if len(c) > 1 else 0.0, rel=1e-8, abs=1e-15)
        previous = flat() - theta
    assert opt.diagnostics["mu"] != 0.0
    assert opt.diagnostics["reduction_ratio"] == pytest.approx(1.0, rel=1e-8)
    assert opt.diagnostics["damping_next"] == pytest.approx(lam * LM_OMEGA)
    assert opt.global_state["damping"] == pytest.approx(lam * LM_OMEGA)


def test_unfactored_parameters_take_adam_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    norm = copy.deepcopy(model[1])
    reference = torch.optim.Adam(norm.parameters(), lr=0.01)
    closure = BatchClosure(model, nn.CrossEntropyLoss(), x, y)
    nn.functional.cross_entropy(model(x), y).backward()
    for ours, ref in zip(model[1].parameters(), norm.parameters()):
        ref.grad = ours.grad.clone()
    reference.step()
    opt = KFAC(model.parameters(), adam_lr=0.01)
    with pytest.warns(UserWarning, match=r"KFAC: no per-layer statistics for 1 layer\(s\): 1 \(LayerNorm\)"):
        opt.step(closure)
    assert opt.diagnostics["fallback_params"] == 2 and opt.diagnostics["kfac_layers"] == 2
    for ours, ref in zip(model[1].parameters(), norm.parameters()):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


class TokenClassifier(nn.Module):
    """Embedding -> LayerNorm -> Linear: two layers K-FAC cannot factor."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm, self.out = nn.Embedding(10, 4), nn.LayerNorm(12), nn.Linear(12, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.norm(self.embed(tokens).flatten(1)))


def test_layer_norm_and_embedding_fall_back_with_one_warning_naming_both():
    torch.manual_seed(0)
    model = TokenClassifier().double()
    tokens, y = torch.randint(0, 10, (32, 3)), torch.randint(0, 3, (32,))
    opt = KFAC(model.parameters(), cov_update_every=1, inverse_update_every=1)
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            losses.append(float(opt.step(BatchClosure(model, nn.CrossEntropyLoss(), tokens, y))))
    messages = [str(w.message) for w in caught]
    assert messages == [
        "KFAC: no per-layer statistics for 2 layer(s): embed (Embedding), norm (LayerNorm) (only nn.Linear and "
        "nn.Conv2d called once per forward have them); "
        "their parameters use Adam with adam_lr (no Kronecker factors)"
    ]
    assert opt.diagnostics["fallback_params"] == 3 and opt.diagnostics["kfac_layers"] == 1
    assert losses[-1] < losses[0]


def test_gradient_counts_and_refresh_schedule():
    model, x, y = _data("mlp")
    opt = KFAC(model.parameters(), cov_update_every=2, inverse_update_every=3)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            opt.step(BatchClosure(model, nn.CrossEntropyLoss(), x, y))
            d = opt.diagnostics
            seen.append((d["n_grad"], d["cov_updated"], d["inverse_updated"]))
            assert d["grad_equivalents"] >= d["n_grad"]
    assert seen == [(2, 1, 1), (1, 0, 0), (2, 1, 0), (1, 0, 1), (2, 1, 0), (1, 0, 0)]
    assert opt.diagnostics["cov_updates"] == 3 and opt.diagnostics["inverse_updates"] == 2
    assert opt.diagnostics["condition_number"] > 1
