"""A seeded random generator that travels with the optimizer state, for
optimizers that draw probes or labels: a run resumed from ``state_dict`` draws
the same random numbers as the uninterrupted run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.optimizer import ParamsT

from hpo2.optim.base import CurvatureOptimizer


class SeededOptimizer(CurvatureOptimizer):
    """A :class:`CurvatureOptimizer` with ``self._generator`` seeded from the
    ``seed`` setting; its state is saved in ``state_dict`` and restored on load."""

    def __init__(self, params: ParamsT, settings: Mapping[str, Any], *, raise_on_nonfinite: bool = False) -> None:
        super().__init__(params, settings, raise_on_nonfinite=raise_on_nonfinite)
        self._generator = torch.Generator().manual_seed(int(self.settings.seed))  # type: ignore[attr-defined]  # Settings declares seed

    def state_dict(self) -> dict[str, Any]:
        self.global_state["rng_state"] = bytes(self._generator.get_state().tolist())
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = self.global_state.get("rng_state")
        if saved is not None:
            self._generator.set_state(torch.tensor(list(saved), dtype=torch.uint8))
