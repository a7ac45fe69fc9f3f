"""The CLI at a terminal width, and the check that its output fits it with every name whole."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from hpo2.interface.cli import app

WIDTH = 80


def invoke(*args: str):  # type: ignore[no-untyped-def]
    """``hpo2 ARGS`` in a terminal :data:`WIDTH` columns wide."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": str(WIDTH)}, terminal_width=WIDTH)


def assert_fits(output: str, names: list[str]) -> None:
    """No line wider than :data:`WIDTH`, and each name whole on some line."""
    lines = output.splitlines()
    assert [line for line in lines if len(line) > WIDTH] == [], output
    for name in names:
        whole = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
        assert any(whole.search(line) for line in lines), f"{name!r} split or missing:\n{output}"
