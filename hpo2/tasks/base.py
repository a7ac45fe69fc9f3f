"""What a task is (model + data + loss + metrics) and the task registry.

A task fixes its data split, seeds, default batch size and target metric, and
states the reference numbers it reproduces.  Tasks are built by name with
settings (:func:`build_task`); every task's settings model shares
:class:`TaskSettings` (seed, batch size, size limits, data directory, and a
``target`` that replaces the task's own time-to-target threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, Subset, default_collate


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
    """One split as two tensors in memory: ``x[i]`` is sample ``i``'s input, ``y[i]`` its target.

    The fast path: the training loop moves a Split to the trial's device once (when it
    fits, :mod:`hpo2.tasks.placement`) and gathers each batch there, with no
    ``DataLoader``.  Data that do not fit in memory, or need per-sample work (reading
    files, augmentation), belong in a ``torch.utils.data.Dataset`` instead (see
    :class:`Task`).

    Attributes:
        x: inputs, samples along the first dimension.
        y: targets, as many as inputs.
    """

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.x[:n], self.y[:n])

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


#: What a task's split may be: tensors in memory, or any map-style ``Dataset`` whose
#: items are ``(input, target)`` pairs (read through a ``DataLoader``).
SplitData = Split | Dataset

Metric = Callable[[Any, Tensor], float]


def check_split(split: object, where: str) -> None:
    """A clear ``TypeError`` unless ``split`` is a :class:`Split` or a map-style ``Dataset`` with a length."""
    if isinstance(split, Split):
        return
    if isinstance(split, IterableDataset) or not isinstance(split, Dataset) or not hasattr(split, "__len__"):
        raise TypeError(
            f"{where}: got {type(split).__name__}; a split is an hpo2.Split(x, y) or a map-style "
            "torch.utils.data.Dataset with __len__ and __getitem__ (an IterableDataset has no length or order)"
        )


def split_size(split: SplitData) -> int:
    """How many samples a split holds (a map-style Dataset has a length: :func:`check_split`)."""
    return len(split)  # type: ignore[arg-type]  # Split and map-style Datasets both have one


def head(split: SplitData, n: int | None) -> SplitData:
    """The first ``n`` samples of a split (all when ``n`` is None): a Split's slice, a Dataset's ``Subset``."""
    if isinstance(split, Split):
        return split.head(n)
    return split if n is None or n >= split_size(split) else Subset(split, range(n))


def as_pair(batch: Any) -> tuple[Tensor, Tensor]:
    """A collated ``(inputs, targets)`` batch as two tensors, or a clear error."""
    if isinstance(batch, list | tuple) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch):
        return batch[0], batch[1]
    raise TypeError(
        "a Dataset item must be an (input, target) pair that collates to two tensors; the batch was a "
        f"{type(batch).__name__}{f' of {len(batch)}' if isinstance(batch, list | tuple) else ''}: "
        "return (x, y) from __getitem__, or give the Task a collate_fn that makes one"
    )


@torch.no_grad()
def mean_loss_and_metric(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    metric_fn: Metric | None,
    batches: Iterable[tuple[Tensor, Tensor]],
    n: int,
) -> tuple[float, float]:
    """Mean loss and metric of ``model`` over ``batches`` of ``n`` samples in all (eval
    mode, the model's mode restored): each batch weighs its share of the samples (the
    loss and metric are means); the metric is the loss when ``metric_fn`` is None."""
    was_training = model.training
    model.eval()
    try:
        loss_sum, metric_sum = 0.0, 0.0
        for xb, yb in batches:
            out = model(xb)
            weight = len(xb) / n
            loss_sum += float(loss_fn(out, yb)) * weight
            if metric_fn is not None:
                metric_sum += metric_fn(out, yb) * weight
    finally:
        model.train(was_training)
    return loss_sum, loss_sum if metric_fn is None else metric_sum


def loss_and_metric(
    model: nn.Module,
    loss_fn: Callable[[Any, Tensor], Tensor],
    metric_fn: Metric | None,
    x: Tensor,
    y: Tensor,
    batch_size: int = 2048,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean loss and metric of ``model`` on ``x, y`` (eval mode, in batches, the
    model's mode restored); the metric is the loss when ``metric_fn`` is None.
    With ``device``, each batch is copied there (a split kept in host memory)."""

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            yield (xb, yb) if device is None else (xb.to(device), yb.to(device))

    return mean_loss_and_metric(model, loss_fn, metric_fn, batches(), len(x))


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of correct predictions (argmax over classes, or logit > 0 for one output)."""
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return float(((outputs[:, 0] > 0).to(targets.dtype) == targets.reshape(-1)).float().mean())
    return float((outputs.argmax(dim=1) == targets).float().mean())


@dataclass(kw_only=True)
class Task:
    """A workload: model, loss, data splits and the metric a study optimises.

    Build one in a function and return it; hpo2 trains it with each optimizer a study
    proposes (:func:`hpo2.train.run_training`).  A minimal task::

        Task(name="my_task", model=net, loss_fn=nn.CrossEntropyLoss(), train=train_ds, valid=valid_ds,
             batch_size=128, metric="accuracy", metric_fn=accuracy, higher_is_better=True, target=0.9)

    Only ``name``, ``model``, ``loss_fn``, ``train``, ``valid`` and ``batch_size`` are
    required (keywords only): without a metric the validation loss is the metric (lower
    is better), and without a ``target`` no time-to-target is measured.

    **Splits.**  ``train``, ``valid`` and ``test`` are each either

    * a :class:`Split` -- tensors in memory: the fast path, moved to the device once
      and batched there (:mod:`hpo2.tasks.placement`); or
    * any map-style ``torch.utils.data.Dataset`` (``__len__`` and ``__getitem__``,
      e.g. one that reads image files from disk and augments them, larger than
      memory): read through a ``DataLoader`` with ``loader_workers`` worker processes,
      pinned memory on CUDA and non-blocking copies, in a seeded order, so a trial
      reproduces (:mod:`hpo2.tasks.loading`).  Each item is an ``(input, target)``
      pair that collates (``collate_fn``) into two tensors.

    An epoch is one pass over the training samples.  An optimizer whose ``batch_size``
    setting asks for a batch larger than the task's (Hessian-free's ``"full"``) on a
    Dataset gets its gradient accumulated over loader batches of ``batch_size``
    samples, so memory stays bounded by the task's batch, not by the dataset
    (:class:`hpo2.optim.StreamingClosure`); gradient-equivalents still count
    gradients on the task's batch.  Validation streams ``valid`` in batches of the
    task's batch (2048 samples for a Split).

    **Models.**  ``model(inputs)`` may return anything ``loss_fn`` and ``metric_fn``
    take (a tensor, a tuple, a dict); only Gauss-Newton curvature (Hessian-free,
    Newton-CG's default, K-FAC, Sophia's GNB) needs one output tensor, and says so
    when it does not get one.  BatchNorm and Dropout are used in the mode the model
    is in; curvature sees BatchNorm's batch statistics (:mod:`hpo2.curvature.batch_norm`),
    and validation runs in eval mode.

    Attributes:
        name: the task's name (logged with every trial).
        model: the ``nn.Module`` to train; built afresh for every trial (the task's
            builder runs once per trial), initialised from the torch seed set before.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``, the mean over the
            batch's samples (``reduction="mean"``): batches are weighed by their size.
        train: the training split (:data:`SplitData`).
        valid: the validation split: every evaluation, pruning and time-to-target read it.
        test: an optional held-out split, never used for training or selection.
        batch_size: the mini-batch size of training; the unit of gradient-equivalents.
        metric: name of the validation metric (``"accuracy"``, ``"loss"``, ...).
        metric_fn: ``(outputs, targets) -> float``, a mean over a batch, averaged over
            a split weighted by batch size; None makes the metric the loss.
        higher_is_better: the metric's direction.
        target: the validation metric value whose first crossing is time-to-target
            (None: no time-to-target is measured; a study file's ``task.settings.target`` sets one).
        reference: the published numbers this task can be compared with, in words.
        extra_metrics: more named metrics, as ``metric_fn``.
        loader_workers: ``DataLoader`` worker processes for Dataset splits (0: load in
            the training process; Split splits ignore it).
        collate_fn: merges a list of Dataset items into an ``(inputs, targets)`` batch
            (None: ``torch.utils.data.default_collate``).
    """

    name: str
    model: nn.Module
    loss_fn: nn.Module
    train: SplitData
    valid: SplitData
    batch_size: int
    test: SplitData | None = None
    metric: str = "loss"
    metric_fn: Metric | None = None
    higher_is_better: bool = False
    target: float | None = None
    reference: str = ""
    extra_metrics: dict[str, Metric] = field(default_factory=dict)
    loader_workers: int = 0
    collate_fn: Callable[[list[Any]], Any] | None = None

    def __post_init__(self) -> None:
        check_split(self.train, f"Task {self.name!r}: train")
        check_split(self.valid, f"Task {self.name!r}: valid")
        if self.test is not None:
            check_split(self.test, f"Task {self.name!r}: test")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"Task {self.name!r}: batch_size = {self.batch_size!r}; give a positive integer")
        if not isinstance(self.loader_workers, int) or self.loader_workers < 0:
            raise ValueError(f"Task {self.name!r}: loader_workers = {self.loader_workers!r}; give an integer >= 0")

    def first_samples(self, split: SplitData, n: int) -> Split:
        """The first ``n`` samples of one of the task's splits as tensors in memory (a
        Dataset's items collated by ``collate_fn``), e.g. the study's flatness batch."""
        if isinstance(split, Split):
            return split.head(n)
        items = [split[i] for i in range(min(n, split_size(split)))]
        return Split(*as_pair((self.collate_fn or default_collate)(items)))

    def reached(self, value: float) -> bool:
        """Whether ``value`` of the metric reaches the target (never, without a target)."""
        if self.target is None:
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    @property
    def target_label(self) -> str:
        """``valid accuracy >= 0.95``: when the task counts as solved (:func:`target_label`)."""
        return target_label(self.metric, self.higher_is_better, self.target)


def target_label(metric: str, higher_is_better: bool, target: float | None) -> str:
    """The time-to-target condition in words: ``valid accuracy >= 0.95``, ``valid loss <= 90``.

    Examples:
        >>> target_label("accuracy", True, 0.95)
        'valid accuracy >= 0.95'
        >>> target_label("reconstruction_error", False, 60.0)
        'valid reconstruction_error <= 60'
        >>> target_label("loss", False, None)
        'no target'
    """
    if target is None:
        return "no target"
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
