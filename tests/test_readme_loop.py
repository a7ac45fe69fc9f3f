"""The README's own-loop example runs as written, on a best config exported the way ``hpo2 study best
--export`` writes it, and trains: for a first-order baseline (a plain torch optimizer trained nothing on
this loop), Hessian-free and K-FAC, each with a schedule."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo2.study.config import StudyConfig
from hpo2.study.results import export_config, write_export
from hpo2.study.space import SearchSpace

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### The optimizers in your own loop"


def readme_loop() -> str:
    """The first python block of the README's own-loop section."""
    text = README.read_text()
    section = text[text.index(SECTION) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, f"no python block under {SECTION!r}"
    return found.group(1)


def export_best(optimizer: dict[str, Any], path: Path) -> dict[str, Any]:
    """Export a (one-trial, all settings fixed) digits_mlp study's best trial to ``path``."""
    config = StudyConfig(name="quickstart", task="digits_mlp", budget={"epochs": 3}, optimizers=[optimizer])
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    SearchSpace(config).suggest(trial)
    study.tell(trial, 0.95)
    exported = export_config(config, study.trials[0])
    path.parent.mkdir(parents=True)
    write_export(path, exported)
    return exported


SCHEDULE = {"warmup": 0.1, "decay": "cosine", "final_fraction": 0.1}
BEST = {
    "sgd": {"name": "sgd", "fixed": {"lr": 0.1, "momentum": 0.9}, "schedule": SCHEDULE},
    "hessian_free": {"name": "hessian_free", "fixed": {"cg_max_iter": 10}, "schedule": SCHEDULE},
    "kfac": {"name": "kfac", "fixed": {"lr": 0.1}, "schedule": SCHEDULE},
}


@pytest.mark.parametrize("name", list(BEST))
def test_the_readme_loop_runs_and_trains(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    exported = export_best(BEST[name], tmp_path / "studies" / "quickstart.best.yaml")
    assert exported["optimizer"]["settings"]["schedule"] == SCHEDULE
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(readme_loop(), "README.md", "exec"), namespace)
    assert namespace["schedule"] is not None
    means = [float(m) for m in re.findall(r"epoch \d+: mean training loss ([0-9.]+)", capsys.readouterr().out)]
    assert len(means) == 3, means
    assert means[-1] < 0.8 * means[0], means
    # the schedule ran to its end: the last step took final_fraction x lr
    group = namespace["optimizer"].param_groups[0]
    assert group["lr"] == pytest.approx(0.1 * group["initial_lr"])
