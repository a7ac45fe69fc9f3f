"""The study file (hpo2.study.config): bad files name the field and exit 2, a three-line file is valid, every
shipped study file validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpo2.study.config import load_study_config
from tests.study.helpers import run_cli


@pytest.mark.parametrize(
    "data,message",
    [
        ({"name": "x", "task": "digits_mlp", "sampler": {"name": "smac"}}, "sampler.name"),
        ({"name": "x", "task": "digits_mlp", "optimizers": ["newton"]}, "'newton' is not a known optimizer"),
        (
            {"name": "x", "task": "digits_mlp", "optimizers": [{"name": "sgd", "ranges": {"lr": [1.0, 0.1]}}]},
            "ranges.lr = [1.0, 0.1]: give [low, high] with low < high",
        ),
        ({"name": "x", "task": "digits_mlp", "n_trials": "many"}, "n_trials = 'many'"),
        (
            {
                "name": "x",
                "task": "digits_mlp",
                "objective": ["valid_loss", "wall_seconds"],
                "sampler": {"name": "cmaes"},
            },
            "cmaes",
        ),
        ({"name": "x y", "task": "digits_mlp"}, "name = 'x y'"),
        (  # a setting renamed since the file was written
            {"name": "x", "task": "digits_mlp",
             "optimizers": [{"name": "shampoo", "ranges": {"epsilon": [1e-9, 1e-4]}}]},
            "ranges.epsilon = [1e-09, 0.0001]: Shampoo's epsilon was renamed eps; write eps: [1e-09, 0.0001]",
        ),
        (
            {"name": "x", "task": "digits_mlp", "optimizers": [{"name": "kfac", "fixed": {"fallback_lr": 0.01}}]},
            "fixed.fallback_lr = 0.01: KFAC's fallback_lr was renamed adam_lr; write adam_lr: 0.01",
        ),
        ({"name": "x", "task": {"name": "digits_mlp", "settings": {"batchsize": 3}}}, "unknown setting(s) batchsize"),
    ],
)
def test_bad_study_file_gives_the_field_path_and_exit_2(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("study", "run", str(path))
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_minimal_three_line_study_file_is_valid(tmp_path):
    (tmp_path / "s.yaml").write_text("name: quick\ntask: digits_mlp\nn_trials: 3\n")
    config, _ = load_study_config(tmp_path / "s.yaml")
    assert config.sampler.name == "tpe" and len(config.optimizers) >= 7 and config.budget.epochs == 2


def test_every_shipped_study_file_is_valid():
    from hpo2.study.config import StudyConfig as Schema
    from hpo2.train.config import validate

    files = sorted(Path(__file__).resolve().parents[2].glob("studies/*.yaml"))
    names = set()
    for file in files:
        data = yaml.safe_load(file.read_text())
        if "task" in data and "name" in data and "optimizer" not in data:
            config = validate(Schema, data, str(file))
            names.add(config.task.name)
    from hpo2.tasks import TASKS

    assert names == set(TASKS)  # a ready-to-run study for every task
