"""Muon + AdamW: orthogonalised matrix updates, AdamW elsewhere, state_dict, config."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hpo2.optim import MuonWithAdamW, from_config
from hpo2.optim import muon as muon_module
from hpo2.optim.muon import newton_schulz, ns_dtype_for


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(64, 12, generator=gen), torch.randint(0, 4, (64,), generator=gen)


def test_matrix_updates_are_orthogonalised_and_the_rest_follows_adamw():
    model, (x, y) = _model(), _batch()
    reference = copy.deepcopy(model)
    lr, adam_lr = 0.02, 1e-3
    opt = from_config({"name": "muon", "settings": {"lr": lr, "adam_lr": adam_lr}}, model.parameters())
    assert isinstance(opt, MuonWithAdamW)
    biases = [p for p in reference.parameters() if p.dim() == 1]
    adamw = torch.optim.AdamW(biases, lr=adam_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    weight = model[0].weight
    before = weight.detach().clone()
    grad_singular = None
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if grad_singular is None:
            grad_singular = torch.linalg.svdvals(weight.grad)
        opt.step()
        _step(reference, adamw, x, y)
        with torch.no_grad():  # the reference steps only the biases: give it Muon's weights
            for ours, ref in zip(model.parameters(), reference.parameters()):
                if ours.dim() == 2:
                    ref.copy_(ours)
        update = (before - weight.detach()) / (lr * max(1.0, 16 / 12) ** 0.5)
        singular = torch.linalg.svdvals(update)
        # Five quintic Newton-Schulz steps put singular values in roughly [0.7, 1.2]
        # (Jordan et al.), whatever the spread of the gradient's.
        assert float(singular.min()) > 0.5 and float(singular.max()) < 1.3, singular
        before = weight.detach().clone()
    assert float(grad_singular.max() / grad_singular.min()) > 3  # the gradient itself is far from orthogonal
    for ours, ref in zip([p for p in model.parameters() if p.dim() == 1], biases):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_state_dict_round_trip_resumes_identically():
    model, (x, y) = _model(), _batch()
    opt = from_config("muon", model.parameters())
    for _ in range(3):
        _step(model, opt, x, y)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        _step(model, opt, x, y)
    resumed = _model()
    resumed.load_state_dict(saved_model)
    opt2 = from_config("muon", resumed.parameters())
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        _step(resumed, opt2, x, y)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_the_training_loop_charges_muons_newton_schulz_time_and_nothing_for_sgd() -> None:
    from torch import nn

    from hpo2.optim import BatchClosure, from_config, take_step

    torch.manual_seed(0)
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    counts = {}
    for name in ("muon", "sgd"):
        model = nn.Sequential(nn.Linear(32, 256), nn.Tanh(), nn.Linear(256, 4))
        optimizer = from_config(name, model.parameters())
        counts[name] = [
            take_step(optimizer, BatchClosure(model, nn.CrossEntropyLoss(), x, y))[1]["grad_equivalents"]
            for _ in range(3)
        ]
    assert counts["sgd"] == [1.0, 1.0, 1.0]
    assert all(c > 1.0 for c in counts["muon"])  # five Newton-Schulz iterations are not free


# -- Newton-Schulz, the dtype, the equivalence with torch.optim.Muon, the parameter split

JORDAN_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _quintic_iterates(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = JORDAN_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def _with_singular_values(values: torch.Tensor, rows: int, cols: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=gen, dtype=torch.float64))
    return u @ torch.diag(values) @ v.T, u, v


@pytest.mark.parametrize("rows,cols", [(40, 24), (24, 40)])
def test_newton_schulz_is_u_v_transpose_within_muons_singular_value_band(rows: int, cols: int) -> None:
    # singular values spread over two decades, every one at least 1% of the Frobenius norm
    values = torch.logspace(0, -1.3, 24, dtype=torch.float64)
    matrix, u, v = _with_singular_values(values, rows, cols, seed=rows)
    assert float(values.min() / values.norm()) > 0.01
    result = newton_schulz(matrix, steps=5, dtype=torch.float64)
    # the iteration keeps the singular vectors and maps each singular value by the quintic p, five times
    expected = _quintic_iterates(values / matrix.norm())
    torch.testing.assert_close(result, u @ torch.diag(expected) @ v.T, rtol=0, atol=1e-12)
    # Muon's band (computed from p for singular values >= 1% of the norm): [0.682, 1.134], so within 0.32 of U V^T
    assert float(expected.min()) >= 0.68 and float(expected.max()) <= 1.135, expected
    assert float(torch.linalg.matrix_norm(result - u @ v.T, ord=2)) <= 0.32
    assert float(values.max() / values.min()) > 15  # the input was far from orthogonal


def test_auto_runs_newton_schulz_in_float32_on_a_cpu_and_bfloat16_on_an_accelerator(monkeypatch) -> None:
    assert ns_dtype_for("auto", torch.device("cpu")) == torch.float32
    assert ns_dtype_for("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert ns_dtype_for("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert ns_dtype_for("float32", torch.device("cuda")) == torch.float32
    used: list[torch.dtype] = []

    def spy(matrix: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        used.append(dtype)
        return newton_schulz(matrix, steps, dtype)

    monkeypatch.setattr(muon_module, "newton_schulz", spy)
    model, (x, y) = _model(), _batch()
    reference = copy.deepcopy(model)
    opt = MuonWithAdamW(model.parameters(), lr=0.02, momentum=0.0, nesterov=False)
    _step(model, opt, x, y)
    assert used == [torch.float32, torch.float32]
    # and the step is the float32 one: W - lr sqrt(max(1, m/n)) NS_float32(G)
    nn.functional.cross_entropy(reference(x), y).backward()
    weight, grad = reference[0].weight, reference[0].weight.grad
    expected = weight - 0.02 * max(1.0, 16 / 12) ** 0.5 * newton_schulz(grad, 5, torch.float32)
    torch.testing.assert_close(model[0].weight, expected, rtol=0, atol=1e-6)
    in_bfloat16 = weight - 0.02 * max(1.0, 16 / 12) ** 0.5 * newton_schulz(grad, 5, torch.bfloat16).float()
    assert float((model[0].weight - in_bfloat16).detach().abs().max()) > 1e-5  # the two dtypes are told apart


@pytest.mark.parametrize("nesterov,weight_decay", [(True, 0.0), (False, 0.1)])
def test_in_bfloat16_muon_steps_as_torch_optim_muon(nesterov: bool, weight_decay: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 16), nn.Tanh(), nn.Linear(16, 4))
    reference = copy.deepcopy(model)
    settings = dict(lr=0.02, momentum=0.9, nesterov=nesterov, ns_steps=5, weight_decay=weight_decay)
    ours = MuonWithAdamW(model.parameters(), ns_dtype="bfloat16", **settings)  # type: ignore[arg-type]  # typed settings
    matrices = [p for p in reference.parameters() if p.dim() == 2]
    biases = [p for p in reference.parameters() if p.dim() == 1]
    theirs = [torch.optim.Muon(matrices, **settings), torch.optim.AdamW(biases, lr=1e-3, weight_decay=0.0)]  # type: ignore[arg-type]  # typed settings
    x, y = _batch()
    for _ in range(4):
        _step(model, ours, x, y)
        for opt in theirs:
            opt.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        for opt in theirs:
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same arithmetic, bit for bit


def test_given_the_model_embeddings_and_the_output_layer_go_to_adamw() -> None:
    from hpo2.tasks.gpt import GPT

    for tied in (False, True):
        model = GPT(vocab=32, context=8, width=16, depth=2, heads=2, tie_embeddings=tied)
        opt = MuonWithAdamW(model)
        muon = {id(p) for p in opt.param_groups[0]["params"]}
        names = {n for n, p in model.named_parameters() if id(p) in muon}
        hidden = {f"blocks.{i}.{layer}.weight" for i in range(2) for layer in ("attn.qkv", "attn.proj", "fc", "out")}
        assert names == hidden, (tied, names)
        adamw = {id(p) for p in opt.param_groups[1]["params"]}
        assert len(muon) + len(adamw) == len(list(model.parameters())) and not muon & adamw


def test_conv_kernels_are_flattened_and_orthogonalised() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 5))
    opt = MuonWithAdamW(model, lr=0.01)
    kernel = model[0].weight
    assert [p for p in opt.param_groups[0]["params"]] == [kernel]  # the output layer went to AdamW
    before = kernel.detach().clone()
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 5, (32,))
    _step(model, opt, x, y)
    update = (before - kernel.detach()).reshape(6, 9) / 0.01
    singular = torch.linalg.svdvals(update)
    assert float(singular.min()) > 0.6 and float(singular.max()) < 1.25, singular


def test_the_registry_gives_muon_the_model_and_every_other_optimizer_its_parameters() -> None:
    model = _model()
    muon = from_config("muon", model)
    assert muon.param_groups[0]["params"] == [model[0].weight]  # the output layer model[2] is AdamW's
    adam = from_config("adam", model)
    assert adam.param_groups[0]["params"] == list(model.parameters())


def test_groups_with_use_muon_override_the_rule() -> None:
    model = _model()
    first, last = model[0], model[2]
    opt = MuonWithAdamW([{"params": [last.weight], "use_muon": True},
                         {"params": [first.weight, first.bias, last.bias], "use_muon": False}])  # fmt: skip
    assert opt.param_groups[0]["params"] == [last.weight]
    assert opt.param_groups[1]["params"] == [first.weight, first.bias, last.bias]
    with pytest.raises(ValueError, match=r"parameter group 0 has keys \['params'\]: give exactly 'params' and"):
        MuonWithAdamW([{"params": [last.weight]}])
