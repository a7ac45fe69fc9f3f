"""A task from the user's code (``task: {entrypoint: ...}``): resolution, settings, errors,
and that reading a study file imports nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import hpo2
from hpo2.errors import SettingsError
from hpo2.interface.cli import app
from hpo2.study.catalog import list_studies
from hpo2.study.config import load_study_config
from hpo2.tasks.source import TaskSection, resolve_task
from hpo2.train import Budget, run_training
from hpo2.train.config import load_train_config

TASK_FILE = '''
import torch
from torch import nn
import hpo2

MARKER = {marker!r}
if MARKER:
    open(MARKER, "a").write("imported\\n")


def build(hidden: int = 8, scale: float = 1.0, seed: int = 0) -> hpo2.Task:
    """A tiny regression: y = scale * sum(x)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 3, generator=g)
    y = scale * x.sum(1, keepdim=True)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return hpo2.Task(name="tiny", model=model, loss_fn=nn.MSELoss(), train=hpo2.Split(x[:64], y[:64]),
                     valid=hpo2.Split(x[64:], y[64:]), test=None, batch_size=16, metric="loss", metric_fn=None,
                     higher_is_better=False, target=0.05)


class Settings(hpo2.TaskSettings):
    hidden: int = 4
    """hidden units"""


def build_from_model(settings: Settings) -> hpo2.Task:
    """The same task, settings declared as a pydantic model."""
    return build(hidden=settings.hidden, seed=settings.seed)


def not_a_task() -> dict:
    return {{"model": None}}


def needs_width(width: int) -> hpo2.Task:
    return build(hidden=width)
'''


def write_task(folder: Path, marker: Path | None = None, name: str = "my_task.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(TASK_FILE.format(marker=str(marker) if marker else ""))
    return path


def test_a_file_entrypoint_resolves_relative_to_the_file_that_names_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_task(tmp_path / "project" / "tasks")
    monkeypatch.chdir(tmp_path)  # elsewhere: the path is the study file's, not the current folder's
    source = resolve_task({"entrypoint": "./tasks/my_task.py:build"}, tmp_path / "project")
    task = source.build({"hidden": 5})
    assert isinstance(task, hpo2.Task) and task.model[0].out_features == 5
    assert source.summary == "A tiny regression: y = scale * sum(x)."
    assert source.higher_is_better is None  # known only once built


def test_keyword_settings_are_validated_and_hpo2_settings_applied(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    source = resolve_task({"entrypoint": f"{path}:build"})
    assert list(source.settings.model_fields) == ["hidden", "scale", "seed", "batch_size", "target"]
    task = source.build({"batch_size": 8, "target": 0.5, "seed": 3})
    assert (task.batch_size, task.target) == (8, 0.5)
    # seed reaches the function: the data differ between seeds
    other = source.build({"seed": 4})
    assert not torch.equal(task.train.x, other.train.x)
    assert torch.equal(task.train.x, source.build({"seed": 3}).train.x)
    with pytest.raises(SettingsError, match=rf"^{path} \(.*:build\): task.settings: unknown setting\(s\) hiden "
                                            r"\(did you mean 'hidden'\?\)"):
        source.build({"hiden": 3})
    with pytest.raises(SettingsError, match=r"task.settings.hidden = 'wide': Input should be a valid integer"):
        source.build({"hidden": "wide"})


def test_a_pydantic_settings_model_is_the_declaration(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    source = resolve_task({"entrypoint": f"{path}:build_from_model"})
    assert source.settings.model_fields["hidden"].default == 4
    assert source.build({"hidden": 6, "seed": 1}).model[0].out_features == 6
    with pytest.raises(SettingsError, match="unknown setting"):
        source.build({"scale": 2.0})  # build's keyword, not this model's


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("{file}:missing", r"my_task.py: task.entrypoint '.*': no function 'missing' in it; functions there: .*build"),
        ("{folder}/nope.py:build", r"nope.py: task.entrypoint '.*': no such file"),
        ("no_such_pkg_hpo2.tasks:build", r"no_such_pkg_hpo2.tasks: task.entrypoint .*: no module named 'no_such_pkg"),
        ("{file}:MARKER", r"my_task.py: task.entrypoint .*: MARKER is a str, not a function"),
        ("{file}", r"write 'module:function' or 'path/to/file.py:function'"),
    ],
)
def test_a_wrong_entrypoint_is_one_line_naming_the_file(tmp_path: Path, entrypoint: str, message: str) -> None:
    path = write_task(tmp_path)
    with pytest.raises(SettingsError, match=message) as caught:
        resolve_task({"entrypoint": entrypoint.format(file=path, folder=tmp_path)})
    assert "\n" not in str(caught.value)


def test_a_wrong_return_type_and_a_failing_import_name_the_file(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    source = resolve_task({"entrypoint": f"{path}:not_a_task"})
    with pytest.raises(SettingsError, match=rf"{path}: task.entrypoint .* returned a dict; it must return a hpo2.Task"):
        source.build()
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('no GPU here\\nsecond line')\n")
    with pytest.raises(SettingsError, match=rf"{broken}: .*importing it failed \(RuntimeError: no GPU here\)$"):
        resolve_task({"entrypoint": f"{broken}:build"})
    with pytest.raises(SettingsError, match=rf"{path} \(.*:needs_width\): task.settings.width: required \(it has "
                                            r"no default\)$"):
        resolve_task({"entrypoint": f"{path}:needs_width"}).build()


def test_a_module_entrypoint_imports_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "userpkg_hpo2_test"
    write_task(package, name="tasks.py")
    (package / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    try:
        task = resolve_task({"entrypoint": "userpkg_hpo2_test.tasks:build"}).build({"hidden": 2})
        assert task.model[0].out_features == 2
    finally:
        for name in [m for m in sys.modules if m.startswith("userpkg_hpo2_test")]:
            del sys.modules[name]
    assert str(tmp_path) not in sys.path  # the folder was on the path for the import only


def test_reading_study_files_imports_no_user_code(tmp_path: Path) -> None:
    """study list, warm starts and suites read study files: none of that may run the task's code."""
    marker = tmp_path / "imported.txt"
    write_task(tmp_path / "tasks", marker)
    study = tmp_path / "mine.yaml"
    study.write_text(yaml.safe_dump({"name": "mine", "n_trials": 2,
                                     "task": {"entrypoint": "tasks/my_task.py:build", "settings": {"bogus": 1}}}))
    config, _ = load_study_config(study)
    assert config.task.entrypoint == f"{tmp_path / 'tasks' / 'my_task.py'}:build"  # anchored at the study file
    assert config.task.label == "my_task.py:build"
    rows = list_studies(tmp_path)
    assert [r.task for r in rows] == ["my_task.py:build"]
    assert not marker.exists()
    with pytest.raises(SettingsError, match="unknown setting"):  # the settings are checked when it is resolved
        resolve_task(config.task).parse(config.task.settings)
    assert marker.read_text() == "imported\n"


def test_a_section_names_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one of name"):
        TaskSection(name="digits_mlp", entrypoint="a:b")
    with pytest.raises(ValueError, match="exactly one of name"):
        TaskSection()
    assert TaskSection.model_validate("digits_mlp").name == "digits_mlp"


def test_hpo2_train_runs_a_train_config_naming_a_task_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_task(tmp_path / "tasks")
    config = tmp_path / "best.yaml"
    config.write_text(yaml.safe_dump({"task": {"entrypoint": "tasks/my_task.py:build", "settings": {"hidden": 6}},
                                      "optimizer": {"name": "lbfgs"}, "budget": {"epochs": 3}}))
    monkeypatch.chdir(tmp_path.parent)
    loaded = load_train_config(config)
    assert loaded.task.entrypoint == f"{tmp_path / 'tasks' / 'my_task.py'}:build"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--device", "cpu"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "training my_task.py:build with lbfgs" in result.output
    task = resolve_task(loaded.task).build(loaded.task.settings)
    trained = run_training(task, {"name": "lbfgs"}, Budget(epochs=3), device="cpu")
    assert trained.history[-1].valid_loss < trained.history[0].valid_loss or trained.history[0].valid_loss < 0.05


def test_hpo2_tasks_lists_an_entrypoints_settings_and_errors_in_one_line(tmp_path: Path) -> None:
    path = write_task(tmp_path)
    result = CliRunner().invoke(app, ["tasks", f"{path}:build"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│ ")}
    assert {"hidden", "scale", "seed", "batch_size", "target"} <= set(rows)
    assert "│ 8 " in rows["hidden"] and "A tiny regression" in result.output
    result = CliRunner().invoke(app, ["tasks", f"{path}:nothing"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and path.name in result.output
    assert "no function 'nothing'" in result.output


def test_a_study_run_with_a_task_file_from_the_cli(tmp_path: Path) -> None:
    """End to end: the direction comes from the built task (lower is better here), the trials train it."""
    write_task(tmp_path / "tasks")
    study = tmp_path / "mine.yaml"
    study.write_text(yaml.safe_dump({
        "name": "mine", "n_trials": 2, "task": {"entrypoint": "./tasks/my_task.py:build", "settings": {"hidden": 4}},
        "optimizers": ["sgd", "lbfgs"], "budget": {"epochs": 2}, "report": False, "confirm": False,
        "curvature_diagnostics": False,
    }))
    result = CliRunner().invoke(app, ["study", "run", str(study), "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    outcome = hpo2.run_study(study)  # nothing to do: the same study, read back
    assert outcome.study.direction.name == "MINIMIZE"
    assert len([t for t in outcome.study.trials if t.state.name == "COMPLETE"]) == 2
    assert outcome.best is not None and outcome.best["task"]["entrypoint"].endswith("my_task.py:build")
    assert outcome.best["task"]["settings"] == {"hidden": 4}
