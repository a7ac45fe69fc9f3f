"""byte_gpt: the pinned corpus, the windows, the GPT's causality and curvature, the metric, and the optimizers it is
studied with."""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from hpo2.curvature import GGNOperator, HessianOperator, output_hessian_for
from hpo2.errors import DataMissingError, SettingsError
from hpo2.tasks import build_task, check_task_data
from hpo2.tasks.gpt import GPT
from hpo2.tasks.language_model import byte_parts, tiled_windows
from hpo2.tasks.stdlib_corpus import CORPUS_BYTES, CORPUS_FILES, CorpusMismatchError, read_corpus, stdlib_dir
from hpo2.train import Budget, evaluate, run_training

TINY = {"width": 16, "depth": 1, "heads": 2, "context": 16, "train_windows": 64, "batch_size": 16, "n_valid": 64}


def test_the_default_task_is_a_one_to_three_million_parameter_gpt_on_the_pinned_bytes() -> None:
    task = build_task("byte_gpt")
    n_params = sum(p.numel() for p in task.model.parameters())
    assert 1_000_000 <= n_params <= 3_000_000, n_params
    assert task.metric == "bits_per_byte" and not task.higher_is_better
    assert task.train.x.shape == (2048, 128) and task.train.x.dtype == torch.int64
    train, valid, _ = byte_parts(read_corpus(stdlib_dir()))
    # every validation byte after the first is a target exactly once, in order
    assert torch.equal(task.valid.y.reshape(-1), valid[1 : 1 + task.valid.y.numel()])
    assert len(valid) - 1 - task.valid.y.numel() < 128
    assert len(train) == int(0.9 * CORPUS_BYTES)


def test_training_windows_are_next_byte_pairs_from_the_training_part_and_follow_the_seed() -> None:
    task = build_task("byte_gpt", {**TINY, "seed": 3})
    train, _, _ = byte_parts(read_corpus(stdlib_dir()))
    assert torch.equal(task.train.x[:, 1:], task.train.y[:, :-1])  # targets are the inputs shifted by one
    text = bytes(train.tolist())
    for x, y in zip(task.train.x[:5], task.train.y[:5]):
        assert bytes(x.tolist()) + bytes(y[-1:].tolist()) in text
    again, other = build_task("byte_gpt", {**TINY, "seed": 3}), build_task("byte_gpt", {**TINY, "seed": 4})
    assert torch.equal(again.train.x, task.train.x) and not torch.equal(other.train.x, task.train.x)


def test_tiled_windows_cover_a_part_once() -> None:
    split = tiled_windows(torch.arange(21), 5)
    assert split.x.tolist()[0] == [0, 1, 2, 3, 4] and split.y.tolist()[-1] == [16, 17, 18, 19, 20]
    assert len(split) == 4
    assert len(tiled_windows(torch.arange(20), 5)) == 3  # the last byte has no successor to predict


def test_a_position_sees_only_the_bytes_before_it() -> None:
    torch.manual_seed(0)
    model = GPT(vocab=256, context=12, width=16, depth=2, heads=2)
    tokens = torch.randint(0, 256, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 256
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :, :7], after[:, :, :7], rtol=0, atol=0)
    assert (before[:, :, 7:] - after[:, :, 7:]).abs().amax() > 1e-4


def test_fused_attention_computes_what_the_explicit_one_does() -> None:
    torch.manual_seed(0)
    explicit = GPT(vocab=256, context=12, width=16, depth=2, heads=4)
    fused = GPT(vocab=256, context=12, width=16, depth=2, heads=4, attention="fused")
    fused.load_state_dict(explicit.state_dict())
    tokens = torch.randint(0, 256, (3, 10))
    torch.testing.assert_close(fused(tokens), explicit(tokens), rtol=1e-5, atol=1e-5)


def test_bits_per_byte_is_the_loss_in_bits() -> None:
    task = build_task("byte_gpt", TINY)
    x, y = task.train.x[:8], task.train.y[:8]
    with torch.no_grad():
        outputs = task.model(x)
        loss = float(task.loss_fn(outputs, y))
    assert task.metric_fn is not None
    assert task.metric_fn(outputs, y) == pytest.approx(loss / math.log(2), rel=1e-6)
    assert loss == pytest.approx(math.log(256), rel=0.05)  # an untrained model guesses near uniform


def test_a_few_adamw_steps_lower_the_loss() -> None:
    task = build_task("byte_gpt", TINY)
    x, y = task.train.x, task.train.y
    optimizer = torch.optim.AdamW(task.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = task.loss_fn(task.model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_a_changed_corpus_file_is_named_with_both_checksums(tmp_path: Path) -> None:
    for name in CORPUS_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stdlib_dir() / name, tmp_path / name)
    assert len(read_corpus(tmp_path)) == CORPUS_BYTES  # an exact copy is the corpus
    changed = tmp_path / "json" / "scanner.py"
    changed.write_bytes(changed.read_bytes() + b"\n")
    digest = hashlib.sha256(changed.read_bytes()).hexdigest()[:16]
    with pytest.raises(CorpusMismatchError) as caught:
        build_task("byte_gpt", {**TINY, "data_dir": str(tmp_path)})
    message = str(caught.value)
    assert f"json/scanner.py (sha256 {digest}..., pinned {CORPUS_FILES['json/scanner.py']}...)" in message
    assert "1 of 93 files differ" in message and "data_dir" in message
    assert "2ebaaeb8acb307bc942372aa91c5994ac73e743bc8b18f12f46afe5e17f65ad6" in message  # the pinned corpus sum
    assert isinstance(caught.value, DataMissingError)  # the CLI's one-line data error


def test_a_missing_corpus_file_is_named_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match=r"missing __future__\.py, .* and 88 more in .*data_dir"):
        check_task_data("byte_gpt", {"data_dir": str(tmp_path)})


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(SettingsError, match=r"task\.settings\.heads = 3: Value error, must divide width 16"):
        build_task("byte_gpt", {**TINY, "heads": 3})


def _tiny_float64_gpt(attention: str = "math") -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(vocab=7, context=5, width=8, depth=1, heads=2, attention=attention).double()  # type: ignore[arg-type]  # a literal
    with torch.no_grad():  # larger than GPT-2's init so that every term of the curvature matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model, torch.randint(0, 7, (3, 5)), torch.randint(0, 7, (3, 5))


def test_a_hessian_vector_product_through_the_model_matches_finite_differences_of_the_gradient() -> None:
    model, x, y = _tiny_float64_gpt()
    params = list(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    v = [torch.randn_like(p) for p in params]
    hv = HessianOperator(loss_fn(model(x), y), params).matvec(v)

    def gradient_at(step: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=step)
        grads = torch.autograd.grad(loss_fn(model(x), y), params)
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=step)
        return list(grads)

    eps = 1e-5
    difference = [(a - b) / (2 * eps) for a, b in zip(gradient_at(eps), gradient_at(-eps))]
    flat_hv, flat_fd = torch.cat([h.reshape(-1) for h in hv]), torch.cat([d.reshape(-1) for d in difference])
    torch.testing.assert_close(flat_hv, flat_fd, rtol=1e-6, atol=1e-8)
    assert flat_hv.norm() > 1e-2


def test_a_gauss_newton_product_through_the_model_matches_the_dense_j_t_h_j() -> None:
    model, x, y = _tiny_float64_gpt()
    params = list(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    outputs = model(x)
    operator = GGNOperator(outputs, params, output_hessian_for(loss_fn, outputs, y))
    v = [torch.randn_like(p) for p in params]
    flat_v = torch.cat([t.reshape(-1) for t in v])
    # dense reference: the Jacobian of the outputs and the Hessian of the loss in the outputs
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in params]

    def outputs_of(flat: torch.Tensor) -> torch.Tensor:
        pieces, start = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = flat[start : start + shape.numel()].reshape(shape)
            start += shape.numel()
        return torch.func.functional_call(model, pieces, (x,)).reshape(-1)

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    jacobian = torch.autograd.functional.jacobian(outputs_of, theta, vectorize=True)
    z = outputs.detach()
    loss_hessian = torch.autograd.functional.hessian(lambda flat: loss_fn(flat.reshape(z.shape), y), z.reshape(-1))
    dense = jacobian.T @ loss_hessian @ jacobian @ flat_v
    ours = torch.cat([t.reshape(-1) for t in operator.matvec(v)])
    torch.testing.assert_close(ours, dense, rtol=1e-8, atol=1e-10)
    assert dense.norm() > 1e-3


@pytest.mark.parametrize("name", ["adamw", "muon", "soap", "shampoo", "kfac"])
def test_every_optimizer_of_the_study_trains_the_task(name: str) -> None:
    task = build_task("byte_gpt", TINY)
    embedding = task.model.embed.weight.detach().clone()
    settings = {"kfac": {"lr": 0.05, "cov_update_every": 1, "inverse_update_every": 4}}.get(name, {})
    before, _ = evaluate(task, task.train)
    fallback = pytest.warns(UserWarning, match=r"statistics for 5 layer\(s\): embed \(Embedding\), "
                            r"position \(Embedding\), blocks.0.ln_attn \(LayerNorm\)")
    with fallback if name == "kfac" else contextlib.nullcontext():
        result = run_training(task, {"name": name, "settings": settings}, Budget(steps=8), device="cpu")
    after, _ = evaluate(task, task.train)
    assert result.status == "completed"
    assert after < before - 0.1, (before, after)
    assert not torch.equal(task.model.embed.weight, embedding)  # the embeddings train too (K-FAC: its fallback)
