"""Shared by the study tests: a small study file and the CLI runner."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from hpo2.interface.cli import app


def write_study(tmp_path: Path, **fields) -> Path:
    data = {"name": "t", "task": "logreg_breast_cancer", "budget": {"epochs": 2},
            "optimizers": ["sgd", "adam", "newton_cg"], "n_trials": 4, "report": False, "confirm": False, **fields}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))
