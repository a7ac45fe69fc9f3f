"""``hpo2 tasks`` and ``hpo2 tasks NAME``: printed from the task registry and settings models."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.interface.optimizer_tables import format_value
from hpo2.tasks.image_classification import IDX_FILES
from hpo2.tasks.registry import TASKS


def _invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["tasks", *args], env={"COLUMNS": "400", **(env or {})})
    return result.exit_code, result.output


def _row(output: str, first: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(f"│ {first} "))
    return [cell.strip() for cell in line.split("│")[1:-1]]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_setting_has_a_description_and_is_listed_with_its_default(name: str) -> None:
    fields = TASKS[name].settings.model_fields
    assert all(info.description for info in fields.values()), [f for f, i in fields.items() if not i.description]
    code, output = _invoke(name)
    assert code == 0, output
    assert TASKS[name].summary in output
    for field, info in fields.items():
        row = _row(output, field)
        assert row[1] == format_value(info.default) and row[3] == info.description, (field, row)


def test_the_list_gives_each_task_its_metric_direction_and_data_status(tmp_path: Path) -> None:
    code, output = _invoke(env={"HPO2_DATA_DIR": str(tmp_path)})
    assert code == 0, output
    assert _row(output, "digits_mlp")[2:] == ["valid accuracy >= 0.95", "bundled or generated"]
    assert _row(output, "quadratic_deep")[2] == "valid loss <= 90"
    assert _row(output, "mnist_mlp")[3].startswith("missing")


@pytest.mark.parametrize("name", list(TASKS))
def test_a_tasks_settings_come_under_its_target(name: str) -> None:
    result = CliRunner().invoke(app, ["tasks", name], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())  # the caption may wrap at 80 columns
    assert f"target: {TASKS[name].target_label} (time-to-target" in shown


def test_a_task_whose_files_are_missing_says_how_to_get_them_and_ready_once_they_are_there(tmp_path: Path) -> None:
    env = {"HPO2_DATA_DIR": str(tmp_path)}
    code, output = _invoke("mnist_mlp", env=env)
    assert code == 0 and "data: missing: missing train-images-idx3-ubyte" in output and "download=true" in output
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in IDX_FILES:  # checked for presence, never read
        (raw / stem).touch()
    code, output = _invoke("mnist_mlp", env=env)
    assert code == 0 and "data: ready" in output
    assert _row(_invoke(env=env)[1], "mnist_mlp")[3] == "ready"


def test_an_unknown_task_says_did_you_mean_and_exits_2() -> None:
    code, output = _invoke("digits_mpl")
    assert code == 2
    assert "'digits_mpl' is not a known task (did you mean 'digits_mlp'?)" in output
