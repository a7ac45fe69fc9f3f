"""Reading device scalars on the host, all at once.

Each conversion of a tensor to a Python number (``float``, ``item``, ``bool``)
waits for the device to finish its queued work.  Where the host truly needs
numbers (a line search's accept/reject test, a step's diagnostics) they are read
together in one transfer.
"""

from __future__ import annotations

from functools import reduce

import torch
from torch import Tensor


def host_floats(*values: Tensor | float) -> list[float]:
    """The values as Python floats; the 0-d tensors among them cross in one transfer
    (in the widest of their dtypes, so float64 values stay exact)."""
    tensors = [v.detach().reshape(()) for v in values if isinstance(v, Tensor)]
    if not tensors:
        return [float(v) for v in values]
    dtype = reduce(torch.promote_types, (t.dtype for t in tensors))
    device = tensors[0].device
    read = iter(torch.stack([t.to(device=device, dtype=dtype) for t in tensors]).tolist())
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]
