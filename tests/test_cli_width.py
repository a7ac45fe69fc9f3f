"""The terminal at 80 columns: every table and help page fits, no name is split,
flags show no value type, help texts carry no reStructuredText markup."""

from __future__ import annotations

import re

import pytest
import typer.main

from hpo2.interface.cli import app
from hpo2.optim import REGISTRY, SAMSettings
from hpo2.tasks.registry import TASKS
from tests.terminal import assert_fits, invoke


def test_the_optimizer_tables_read_at_80_columns() -> None:
    result = invoke("optimizers")
    assert result.exit_code == 0, result.output
    assert_fits(result.output, [*REGISTRY, "sam"])
    for name in [*REGISTRY, "sam"]:
        result = invoke("optimizers", name)
        assert result.exit_code == 0, result.output
        settings = SAMSettings if name == "sam" else REGISTRY[name].settings
        assert_fits(result.output, list(settings.model_fields))
        words = {word for info in settings.model_fields.values() for word in (info.description or "").split()}
        assert [word for word in words if word not in result.output] == [], result.output  # none split


def test_the_task_tables_read_at_80_columns() -> None:
    result = invoke("tasks")
    assert result.exit_code == 0, result.output
    assert_fits(result.output, list(TASKS))
    for name, spec in TASKS.items():
        result = invoke("tasks", name)
        assert result.exit_code == 0, result.output
        assert_fits(result.output, list(spec.settings.model_fields))


def _command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:  # type: ignore[no-untyped-def]
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*path, name))
    return paths


@pytest.mark.parametrize("path", _command_paths(typer.main.get_command(app)), ids=" ".join)
def test_every_help_page_reads_at_80_columns(path: tuple[str, ...]) -> None:
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert_fits(result.output, ["--help"])
    assert "<bool>" not in result.output  # a flag takes no value
    assert "``" not in result.output


def test_train_ends_with_the_time_to_target_and_the_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "train.yaml"
    config.write_text("task: {name: digits_mlp, settings: {n_train: 200, target: 0.5}}\n"
                      "optimizer: {name: adam}\nbudget: {epochs: 2}\n")  # fmt: skip
    result = invoke("train", "--config", str(config))
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.search(r"time to target \(valid accuracy >= 0\.5\): (\d+\.\d+s|not reached)$", last), last
