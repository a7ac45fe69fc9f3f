"""``hpo2 optimizers`` and ``hpo2 optimizers NAME``: printed from the settings models."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.interface.optimizer_tables import format_allowed, format_range, format_value, settings_table
from hpo2.interface.tables import FittedTable
from hpo2.optim import REGISTRY
from hpo2.optim.registry import ATTACHMENTS
from hpo2.optim.settings import Choice, FloatRange, IntRange

NAMES = [*REGISTRY, *ATTACHMENTS]


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["optimizers", *args], env={"COLUMNS": "400"})
    return result.exit_code, result.output


def _columns(table: FittedTable) -> dict[str, list[str]]:
    return {column.header: [row[i] for row in table.rows] for i, column in enumerate(table.columns)}


def test_the_list_names_every_optimizer_with_family_summary_and_reference() -> None:
    code, output = _invoke()
    assert code == 0, output
    lines = output.splitlines()
    for name in REGISTRY:
        spec = REGISTRY[name]
        row = next(line for line in lines if line.startswith(f"│ {name} "))
        for text in (spec.settings.family, spec.summary, spec.settings.reference):
            assert text in row, (name, text)
    for key, settings in ATTACHMENTS.items():  # sam, schedule
        assert any(line.startswith(f"│ {key} ") and settings.reference in line for line in lines), key


@pytest.mark.parametrize("name", NAMES)
def test_each_optimizer_lists_every_setting_with_default_range_allowed_and_description(name: str) -> None:
    settings = ATTACHMENTS[name] if name in ATTACHMENTS else REGISTRY[name].settings
    columns = _columns(settings_table(name))
    fields = settings.model_fields
    assert columns["setting"] == list(fields)
    assert columns["default"] == [format_value(f.default) for f in fields.values()]
    assert columns["description"] == [f.description for f in fields.values()]
    space = settings.search_space()
    assert columns["search range"] == [format_range(space.get(f)) for f in fields]
    assert all(columns["allowed"]), "every setting says what it accepts"
    code, output = _invoke(name)
    assert code == 0, output
    assert settings.reference in output
    for field in fields:
        assert any(line.startswith(f"│ {field} ") for line in output.splitlines()), field


def test_the_rows_of_newton_cg_read_as_documented() -> None:
    code, output = _invoke("newton_cg")
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in output.splitlines()
            if line.startswith("│ ") and line.split("│")[1].strip()}
    assert rows["damping"][:3] == ["0.001", "1e-06 .. 1 (log)", "float >= 0"]
    assert rows["cg_max_iter"][:3] == ["50", "5 .. 100 (int, log)", "int >= 1"]
    assert rows["tr_radius"][1] == "0.01 .. 10 (log) if globalization in {trust_region}"
    assert rows["globalization"][:3] == [
        "armijo", "{armijo, trust_region}", "armijo | strong_wolfe | trust_region | none"
    ]
    assert rows["batch_size"][:3] == ["null", "{null, 512, 2048, 8192, full}", "int >= 1 | full | null"]
    assert rows["tr_eta"][1:3] == ["fixed", "float >= 0, < 0.25"]


def test_formatting_of_ranges_and_values() -> None:
    assert format_range(FloatRange(1e-4, 1.0, log=True)) == "0.0001 .. 1 (log)"
    assert format_range(IntRange(1, 20)) == "1 .. 20 (int)"
    assert format_range(Choice((False, True))) == "{false, true}"
    assert format_range(None) == "fixed"
    assert format_allowed(bool) == "true | false"
    assert format_allowed(int | None) == "int | null"


def test_an_unknown_name_says_did_you_mean_and_exits_2() -> None:
    code, output = _invoke("sophiaa")
    assert code == 2
    assert "'sophiaa' is not a known optimizer (did you mean 'sophia'?)" in output
    assert "Traceback" not in output
