"""A ``Dataset`` split through a ``DataLoader``: seeded order, workers, pinned memory, one pass per epoch.

A split that is a map-style ``torch.utils.data.Dataset`` (not a :class:`~hpo2.tasks.base.Split`
of tensors) is read through **one** ``DataLoader`` per split and trial
(:class:`DatasetBatches`):

* **Order.**  Each epoch's order is ``torch.randperm(n, generator)``, the generator
  seeded by the trial's seed, on the host -- the same order the tensor path draws on
  the CPU (:mod:`hpo2.tasks.placement`), so the same data give the same batches
  either way, and a trial reproduces.  The loader reads the batches of indices it is
  given (its ``batch_sampler`` is the plan of the next pass); an epoch is one pass.
* **Workers.**  ``workers`` processes (the task's ``loader_workers``; 0 loads in the
  training process) are kept for the whole trial (``persistent_workers``), so the
  many passes of a streamed large-batch step do not start new ones; their seeds
  come from the same seeded generator (random augmentations reproduce).
* **Transfer.**  On CUDA the loader pins its batches and each is copied with
  ``non_blocking=True``; on the CPU they are used as they come.
* **Large batches.**  A gradient batch larger than the task's is an
  :class:`IndexWindow`: its indices, read a loader batch at a time (the
  :class:`~hpo2.optim.closure.BatchStream` a
  :class:`~hpo2.optim.closure.StreamingClosure` accumulates over), so memory is bounded
  by the task's batch, not by the dataset.

Only one pass of a loader runs at a time (a second one raises): the training loop
finishes or drops each pass before it starts the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from hpo2.optim.closure import Indices
from hpo2.tasks.base import as_pair


class _Plan(Sampler[list[int]]):
    """The batches of indices the loader's next pass reads (set before each pass)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class DatasetBatches:
    """Batches of one ``Dataset`` split for one trial, through one ``DataLoader`` (module docstring).

    Args:
        dataset: a map-style dataset of ``(input, target)`` items.
        device: the trial's device; batches arrive there.
        seed: seeds the epoch orders and the workers.
        workers: ``DataLoader`` worker processes (0: none).
        collate_fn: merges items into a batch (None: ``default_collate``).
    """

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device,
        seed: int,
        workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.device = device
        self._n = len(dataset)  # type: ignore[arg-type]  # a map-style dataset has a length (Task checks it)
        self._generator = torch.Generator().manual_seed(seed)
        self._plan = _Plan()
        self._busy = False
        self.loader = DataLoader(
            dataset,
            batch_sampler=self._plan,
            num_workers=workers,
            collate_fn=collate_fn,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return self._n

    def epoch_order(self) -> Tensor:
        """A fresh permutation of the sample indices (host, seeded)."""
        return torch.randperm(self._n, generator=self._generator)

    def batches(self, index_batches: Sequence[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass reading ``index_batches`` in turn: ``(inputs, targets)`` of each, on the device."""
        plan = [b.tolist() for b in index_batches]
        if self._busy:
            raise RuntimeError("DatasetBatches: a pass started while another is under way; one pass at a time")
        self._busy = True
        try:
            self._plan.batches = plan
            for batch in self.loader:
                inputs, targets = as_pair(batch)
                yield inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
        finally:
            self._busy = False

    def in_order(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over every sample in index order, in batches of ``batch_size`` (evaluation)."""
        return self.batches(list(torch.arange(self._n).split(batch_size)))

    def window(self, indices: Tensor, piece_size: int) -> IndexWindow:
        """The samples at ``indices`` as one gradient batch read ``piece_size`` at a time."""
        return IndexWindow(self, indices, piece_size)


class IndexWindow:
    """A gradient batch of a :class:`DatasetBatches`' samples, read a loader batch at a
    time: the :class:`~hpo2.optim.closure.BatchStream` a streaming closure accumulates over.

    Args:
        source: the split's loader.
        indices: the batch's sample indices, in the order every pass reads them.
        piece_size: samples per loader batch (the task's batch).
    """

    def __init__(self, source: DatasetBatches, indices: Tensor, piece_size: int) -> None:
        self.source = source
        self.indices = indices
        self.piece_size = piece_size

    def __len__(self) -> int:
        return len(self.indices)

    def pieces(self) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the batch, a loader batch at a time, on the device."""
        return self.source.batches(list(self.indices.split(self.piece_size)))

    def take(self, positions: Indices) -> tuple[Tensor, Tensor]:
        """The samples at ``positions`` of the batch, loaded and collated into one batch."""
        (batch,) = list(self.source.batches([self.indices[torch.as_tensor(positions)]]))
        return batch
