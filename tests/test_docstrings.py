"""The public curvature operators, estimators, spectrum tools and solvers document
their arguments and carry a runnable example (pytest runs it: ``--doctest-modules``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from hpo2.curvature import (
    DampedOperator,
    GGNOperator,
    HessianOperator,
    functional_hvp,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    hutchinson_trace,
    hvp,
    lanczos,
    spectral_density,
    top_eigenvalues,
)
from hpo2.solvers import armijo_backtracking, cg, steihaug_cg, strong_wolfe

DOCUMENTED: list[Callable[..., Any]] = [
    hvp, functional_hvp, HessianOperator, GGNOperator, DampedOperator,
    hutchinson_diagonal, gauss_newton_bartlett_diagonal,
    lanczos, top_eigenvalues, hutchinson_trace, spectral_density,
    cg, steihaug_cg, armijo_backtracking, strong_wolfe,
]  # fmt: skip


@pytest.mark.parametrize("obj", DOCUMENTED, ids=lambda o: o.__name__)
def test_args_and_a_runnable_example(obj: Callable[..., Any]) -> None:
    doc = inspect.getdoc(obj) or ""
    assert "\nArgs:\n" in doc, f"{obj.__name__} documents no Args"
    args = doc[doc.index("\nArgs:\n") + 7 : doc.index("\nExample:\n")]
    entries = [line.split(":")[0] for line in args.splitlines() if line.startswith("    ") and line[4] != " "]
    named = {name.strip() for entry in entries for name in entry.split(",")}
    assert set(inspect.signature(obj).parameters) <= named, f"{obj.__name__}: arguments missing from Args"
    assert "\n    >>> " in doc[doc.index("\nExample:\n") :], f"{obj.__name__} has no runnable example"
