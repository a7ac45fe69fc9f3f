"""A test-only counter of device-to-host conversions.

On a GPU every ``float(t)``, ``t.item()``, ``bool(t)``, ``int(t)``, ``t.tolist()`` and
``t.__index__()`` waits for the device queue to drain.  :func:`count_host_syncs`
patches those methods on :class:`torch.Tensor` for the duration of a ``with`` block
and counts the calls, so tests can pin how many round trips a CG solve or an
optimizer step makes -- on a CPU-only machine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

CONVERSIONS = ("__float__", "__bool__", "__int__", "__index__", "item", "tolist")


class HostSyncCounter:
    """Counts per conversion kind; ``total`` is their sum."""

    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


def _counting(name: str, original: Callable[..., Any], counter: HostSyncCounter) -> Callable[..., Any]:
    def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter.by_kind[name] += 1
        return original(self, *args, **kwargs)

    return wrapper


@contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Count tensor-to-Python conversions made inside the block (restored on exit)."""
    counter = HostSyncCounter()
    own = {name: torch.Tensor.__dict__[name] for name in CONVERSIONS if name in torch.Tensor.__dict__}
    try:
        for name in CONVERSIONS:
            setattr(torch.Tensor, name, _counting(name, getattr(torch.Tensor, name), counter))
        yield counter
    finally:
        for name in CONVERSIONS:  # put back what torch.Tensor itself defined; inherit the rest again
            if name in own:
                setattr(torch.Tensor, name, own[name])
            else:
                delattr(torch.Tensor, name)
