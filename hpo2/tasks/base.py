"""What a task is (model + data + loss + metrics) and the task registry.

A task fixes its data split, seeds, default batch size and target metric, and
states the reference numbers it reproduces.  Tasks are built by name with
settings (:func:`build_task`); every task's settings model shares
:class:`TaskSettings` (seed, batch size, size limits, data directory, and a
``target`` that replaces the task's own time-to-target threshold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class TaskSettings(BaseModel):
    """Settings every task takes; tasks add their own fields.  Each field's
    description is the docstring under it (``hpo2 tasks NAME`` prints them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    seed: int = 0
    """seed of the data split and of the model's initialisation"""
    batch_size: int | None = Field(default=None, ge=1)
    """mini-batch size (null: the task's default)"""
    n_train: int | None = Field(default=None, ge=1)
    """use only the first n training samples (null: all)"""
    n_valid: int | None = Field(default=None, ge=1)
    """use only the first n validation samples (null: all)"""
    data_dir: str | None = None
    """where the task's data files are (null: the task's default folder)"""
    target: float | None = Field(default=None, allow_inf_nan=False)
    """the validation metric whose first crossing is time-to-target (null: the task's own)"""


@dataclass
class Split:
    """Inputs and targets of one split, as tensors."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.x[:n], self.y[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


Metric = Callable[[Tensor, Tensor], float]


@torch.no_grad()
def loss_and_metric(
    model: nn.Module,
    loss_fn: nn.Module,
    metric_fn: Callable[[Tensor, Tensor], float] | None,
    x: Tensor,
    y: Tensor,
    batch_size: int = 2048,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean loss and metric of ``model`` on ``x, y`` (eval mode, in batches, the
    model's mode restored); the metric is the loss when ``metric_fn`` is None.
    With ``device``, each batch is copied there (a split kept in host memory)."""
    was_training = model.training
    model.eval()
    try:
        loss_sum, metric_sum, n = 0.0, 0.0, len(x)
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            if device is not None:
                xb, yb = xb.to(device), yb.to(device)
            out = model(xb)
            weight = len(xb) / n
            loss_sum += float(loss_fn(out, yb)) * weight
            if metric_fn is not None:
                metric_sum += metric_fn(out, yb) * weight
    finally:
        model.train(was_training)
    return loss_sum, loss_sum if metric_fn is None else metric_sum


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of correct predictions (argmax over classes, or logit > 0 for one output)."""
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return float(((outputs[:, 0] > 0).to(targets.dtype) == targets.reshape(-1)).float().mean())
    return float((outputs.argmax(dim=1) == targets).float().mean())


@dataclass
class Task:
    """A workload: model, loss, data splits and the metric a study optimises.

    Attributes:
        metric: name of the validation metric (``"accuracy"``, ``"loss"``, ...).
        metric_fn: ``(outputs, targets) -> value`` averaged over a split (batched means).
        higher_is_better: the metric's direction.
        target: the validation metric value whose first crossing is time-to-target.
        reference: the published numbers this task can be compared with, in words.
    """

    name: str
    model: nn.Module
    loss_fn: nn.Module
    train: Split
    valid: Split
    test: Split | None
    batch_size: int
    metric: str
    metric_fn: Metric | None
    higher_is_better: bool
    target: float
    reference: str = ""
    extra_metrics: dict[str, Metric] = field(default_factory=dict)

    def reached(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target

    @property
    def target_label(self) -> str:
        """``valid accuracy >= 0.95``: when the task counts as solved (:func:`target_label`)."""
        return target_label(self.metric, self.higher_is_better, self.target)


def target_label(metric: str, higher_is_better: bool, target: float) -> str:
    """The time-to-target condition in words: ``valid accuracy >= 0.95``, ``valid loss <= 90``.

    Examples:
        >>> target_label("accuracy", True, 0.95)
        'valid accuracy >= 0.95'
        >>> target_label("reconstruction_error", False, 60.0)
        'valid reconstruction_error <= 60'
    """
    return f"valid {metric} {'>=' if higher_is_better else '<='} {target:g}"


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Fully connected layers with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def seeded_split(n: int, sizes: tuple[int, ...], seed: int) -> list[Tensor]:
    """A fixed random partition of ``range(n)`` into index sets of ``sizes``."""
    if sum(sizes) > n:
        raise ValueError(f"split sizes {sizes} exceed the {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for size in sizes:
        out.append(perm[start : start + size])
        start += size
    return out
