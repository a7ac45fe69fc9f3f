"""Config files an attacker crafts (alias bombs, deep nesting, huge files) are refused
at load in one line naming the file, within a second; ordinary anchors still work."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hpo2.errors import SettingsError
from hpo2.interface.cli import app
from hpo2.optim.registry import load_config_file

HEAD = "name: attack\ntask: digits_mlp\nn_trials: 1\n"


def _laughs() -> str:
    """"Billion laughs": 9 anchors of 9 aliases each, 9^9 values in under 500 bytes."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return HEAD + "\n".join(lines) + "\noptimizers: *a8\n"


def _merges() -> str:
    """The same through merge keys, which PyYAML copies key by key."""
    lines = ["b0: &b0 {k0: 1, k1: 2}"]
    lines += [f"b{i}: &b{i} {{<<: [{','.join([f'*b{i - 1}'] * 4)}], x{i}: 1}}" for i in range(1, 12)]
    return HEAD + "\n".join(lines) + "\n"


ATTACKS: dict[str, tuple[Callable[[], str], str]] = {
    "alias bomb": (_laughs, "line 9, column 5: expands to more than 100,000 values through its aliases"),
    "merge-key bomb": (_merges, "expands to more than 100,000 values through its aliases"),
    "20,000 nested brackets": (lambda: "name: " + "[" * 20_000 + "]" * 20_000 + "\n",
                               "40,007 bytes, more than a config file may have (32,768)"),
    "15,000 nested brackets": (lambda: "name: " + "[" * 15_000 + "]" * 15_000 + "\n",
                               "line 1, column 70: more than 64 levels of nesting"),
    "deep block nesting": (lambda: "".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "v: 1\n",
                           "line 64, column 64: more than 64 levels of nesting"),
    "many aliases": (lambda: "a: &a 1\nlist: [" + ",".join(["*a"] * 300) + "]\n", "more than 256 aliases"),
    "4 MB file": (lambda: HEAD + "notes: [" + ",".join(["x"] * 2_000_000) + "]\n",
                  "4,000,051 bytes, more than a config file may have (32,768)"),
    "a 20 kB undefined alias": (lambda: HEAD + "optimizers: *" + "a" * 20_000 + "\n", "found undefined alias"),
}  # fmt: skip


@pytest.mark.parametrize("attack", [*ATTACKS, "10,000 nested JSON arrays"])
def test_a_crafted_file_is_refused_in_one_short_line_within_a_second(tmp_path: Path, attack: str) -> None:
    make, expected = ATTACKS.get(attack, (lambda: '{"name": ' + "[" * 10_000 + "]" * 10_000 + "}", "nested too deeply"))
    path = tmp_path / ("attack.json" if "JSON" in attack else "attack.yaml")
    path.write_text(make())
    started = time.perf_counter()
    with pytest.raises(SettingsError) as refused:
        load_config_file(path)
    seconds = time.perf_counter() - started
    message = str(refused.value)
    assert seconds < 1.0, f"{attack}: {seconds:.2f} s"
    assert "\n" not in message and len(message) < 400, message[:1000]
    assert message.startswith("config file ") and str(path) in message and expected in message, message


def test_one_crafted_file_does_not_stall_study_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "good.yaml").write_text("name: good\ntask: digits_mlp\nn_trials: 2\n")
    monkeypatch.setenv("HPO2_STUDIES", str(tmp_path))
    assert CliRunner().invoke(app, ["study", "list"]).exit_code == 0  # imports done: what follows is the listing
    (tmp_path / "bomb.yaml").write_text(_laughs())
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["study", "list"])
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 0 and "good" in result.output and "attack" not in result.output, result.output


@pytest.mark.parametrize(("content", "expected"), [
    ("n_trials: [" + ",".join(["xyz"] * 5000) + "]", "n_trials = ['xyz', 'xyz', 'xyz',"),
    ("n_trials: 2\noptimizers: [" + ",".join(["7"] * 500) + "]", "optimizers.9 = 7: Input should be"),
])  # fmt: skip
def test_a_large_value_or_many_bad_items_are_never_echoed_whole(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(HEAD.replace("n_trials: 1\n", content + "\n"))
    result = CliRunner().invoke(app, ["study", "best", str(path)])
    line = " ".join(result.output.split())
    assert result.exit_code == 2 and len(line) < 1500 and expected in line, line[:3000]
    assert line.endswith(("(5,000 items, 35,000 characters): Input should be a valid integer", "and 490 more"))


def test_anchors_aliases_and_merge_keys_of_an_ordinary_file_still_load(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(HEAD + "common: &c {lr: [0.001, 0.1]}\noptimizers:\n  - {name: sgd, ranges: *c}\n"
                    "  - {name: adam, ranges: *c}\nbase: &b {epochs: 1}\nbudget: {<<: *b, steps: 5}\n")  # fmt: skip
    data = load_config_file(path)
    assert data["optimizers"][1] == {"name": "adam", "ranges": {"lr": [0.001, 0.1]}}
    assert data["budget"] == {"epochs": 1, "steps": 5}
    assert yaml.safe_load(path.read_text()) == data
