"""The jobs in ``examples/`` run as a user runs them: copied to a folder outside the
package (nothing of theirs is registered in hpo2), ``hpo2 study run study.yaml`` there,
then the best config exported and retrained with ``hpo2 train``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HPO2 = [str(Path(sys.executable).with_name("hpo2"))]  # the console script a user runs


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "160", "PYTHONPATH": ""}
    done = subprocess.run(HPO2 + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if (p / "study.yaml").is_file()))
def test_each_example_study_completes_from_its_own_folder(tmp_path: Path, example: str) -> None:
    folder = tmp_path / example
    shutil.copytree(EXAMPLES / example, folder, ignore=shutil.ignore_patterns("data", "*.db", "mlartifacts"))
    study = yaml.safe_load((folder / "study.yaml").read_text())
    # a small budget: the point is that the job runs end to end, not its result
    study.update(n_trials=2, report=False, confirm=False, curvature_diagnostics=False, device="cpu")
    study["budget"] = {"steps": 6}
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    _run(["study", "run", "study.yaml"], folder)
    _run(["study", "best", "study.yaml", "--export", "best.yaml"], folder)
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["task"]["entrypoint"] == f"{folder / 'task.py'}:build"
    out = _run(["train", "--config", "best.yaml"], folder)
    assert "time to target" in out
