"""Task data on the trial's device: copied there once per trial, batches indexed there.

This is the path of a :class:`~hpo2.tasks.base.Split` (tensors); a split that is a
``Dataset`` is read through a ``DataLoader`` instead (:mod:`hpo2.tasks.loading`).

A trial draws thousands of minibatches from a training split that, for every task
hpo2 ships (the largest, Fashion-MNIST, is 50,000 x 784 float32 = 157 MB), fits in
a GPU's memory many times over.  Copying each batch from host memory would put a
host-to-device transfer and a host synchronisation on every step; instead the
split is moved to the device once (:class:`DeviceBatches`), each epoch's order is
drawn by ``torch.randperm`` on the device with a generator seeded by the trial's
seed, and a batch is a device-side gather ``x[order[i:i+b]]``.

**Threshold.**  The split stays resident when its bytes are at most
:data:`RESIDENT_FRACTION` of the device's free memory (``torch.cuda.mem_get_info``)
at the trial's start: the rest is left to the model, its activations and the
optimizer's state (curvature products keep a second graph alive).  A split that
does not fit stays in host memory, is shuffled on the host, and each batch is
gathered there and copied on its own (:meth:`DeviceBatches.batch`).  Host memory
(``device="cpu"``) is where the data already are: always resident.

**Reproducibility.**  Same seed and same device give the same batches (the
generator lives on the data's device).  On the CPU the order is the one
``torch.randperm(n, generator=Generator().manual_seed(seed))`` draws, as before;
CUDA's generator draws a different (equally seeded) order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpo2.tasks.base import Split

RESIDENT_FRACTION = 0.5  # of the device's free memory at the trial's start


def split_bytes(*splits: Split) -> int:
    """Bytes held by the inputs and targets of ``splits``."""
    return sum(t.numel() * t.element_size() for s in splits for t in (s.x, s.y))


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``); None for host memory."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def fits(nbytes: int, free: int | None, fraction: float = RESIDENT_FRACTION) -> bool:
    """Whether ``nbytes`` of data may live on a device with ``free`` bytes free
    (None: host memory, where the data are already)."""
    return free is None or nbytes <= fraction * free


class DeviceBatches:
    """Minibatches of one split for one trial: the split on ``device`` once when it
    :func:`fits` (else per-batch copies), a seeded order per epoch (module docstring).

    Args:
        split: the task's training split (host tensors, as tasks build them).
        device: the trial's device.
        seed: seeds the epoch orders.
        resident: force the placement (None: :func:`fits` decides from free memory).
    """

    def __init__(self, split: Split, device: torch.device, seed: int, resident: bool | None = None) -> None:
        self.device = device
        self.resident = fits(split_bytes(split), free_bytes(device)) if resident is None else resident
        self.split = split.to(device) if self.resident else split
        home = self.split.x.device
        self._generator = torch.Generator(device=home).manual_seed(seed)

    def __len__(self) -> int:
        return len(self.split)

    def epoch_order(self) -> Tensor:
        """A fresh permutation of the sample indices, on the data's device."""
        return torch.randperm(len(self.split), generator=self._generator, device=self.split.x.device)

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and targets at ``index`` on the trial's device: a device-side gather
        when resident, a host gather and one copy per tensor otherwise."""
        x, y = self.split.x[index], self.split.y[index]
        if self.resident:
            return x, y
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def on_device(self) -> Split:
        """The whole split on the trial's device (itself when resident; a temporary copy
        otherwise, for an optimizer's full-data snapshot such as SVRG's)."""
        return self.split if self.resident else self.split.to(self.device)
