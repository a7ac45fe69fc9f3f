"""A suite's studies are inspected with the ``hpo2 study`` commands, named
``<suite>.<task label>`` and found through the suite file; a suite file given where
a study or train file belongs gets one line saying what it is."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.study.runner import StudyRunner
from hpo2.study.suite import load_suite
from tests.terminal import assert_fits, invoke

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDY = "tiny.breast_cancer_logreg"  # a long name: the tables at 80 columns keep it whole


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture
def suite_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``<tmp>/studies/tiny.yaml``: a suite of one task, its study run (2 trials); the user in ``<tmp>/src``."""
    monkeypatch.delenv("HPO2_STUDIES", raising=False)
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny",
        "tasks": [{"task": "logreg_breast_cancer", "label": "breast_cancer_logreg", "budget": {"epochs": 1},
                   "target": 0.9}],
        "optimizers": ["sgd", "adam"],
        "study": {"n_trials": 2, "report": False, "confirm": False,
                  "curvature_diagnostics": False, "pruner": {"name": "none"}},
    }, sort_keys=False))  # fmt: skip
    suite = load_suite(studies / "tiny.yaml")
    StudyRunner(suite.studies[0], suite.path).run()  # as `hpo2 suite run` runs it, less the suite's report
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    return tmp_path


def test_every_study_command_finds_a_suites_study_by_its_name(suite_project: Path) -> None:
    studies = suite_project / "studies"
    storage = f"sqlite:///{studies / 'tiny.optuna.db'}"
    best_trial = optuna.load_study(study_name=STUDY, storage=storage).best_trial

    status = _cli("study", "status", STUDY)
    assert status.exit_code == 0, status.output
    assert "complete 2" in status.output and f"trial {best_trial.number} " in status.output

    best = _cli("study", "best", STUDY)
    assert best.exit_code == 0, best.output
    export = yaml.safe_load((studies / f"{STUDY}.best.yaml").read_text())  # beside the suite file
    assert export["optimizer"]["name"] == best_trial.params["optimizer"]
    assert export["study"]["name"] == STUDY

    listed = _cli("study", "list")
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if line.startswith(f"│ {STUDY} "))
    assert [c.strip() for c in row.split("│")[2:4]] == ["logreg_breast_cancer", "2/2"]
    for args in (["study", "list"], ["study", "status", STUDY]):  # at 80 columns: the names stay whole
        narrow = invoke(*args)
        assert narrow.exit_code == 0, narrow.output
        assert_fits(narrow.output, [STUDY, "logreg_breast_cancer"] if args[1] == "list" else ["sgd", "adam"])

    report = _cli("study", "report", STUDY, "--no-png")
    assert report.exit_code == 0, report.output
    assert (studies / f"{STUDY}.report.html").is_file()

    unknown = _cli("study", "status", "tiny.nope")
    assert unknown.exit_code == 2
    assert "suite 'tiny'" in unknown.output and f"runs no study 'tiny.nope'; its studies: {STUDY}" in unknown.output

    rerun = _cli("study", "run", STUDY)
    assert rerun.exit_code == 2 and f"hpo2 suite run {studies / 'tiny.yaml'}" in rerun.output

    deleted = _cli("study", "delete", STUDY, "--yes")
    assert deleted.exit_code == 0, deleted.output
    assert STUDY not in optuna.get_all_study_names(storage)


def test_a_suite_file_given_to_a_study_command_or_train_says_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"name": "s", "tasks": [{"task": "digits_mlp", "budget": {"epochs": 1}}],
                                     "optimizers": ["sgd"]}))  # fmt: skip
    for args in (["study", "best", str(suite)], ["study", "run", str(suite)], ["train", "--config", str(suite)]):
        result = _cli(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, (args, result.output)  # one line, no schema errors
        assert f"{suite} is a suite file" in lines[0] and f"`hpo2 suite run {suite}`" in lines[0], lines[0]
        assert "`hpo2 study best s.digits_mlp`" in lines[0]
    monkeypatch.setenv("HPO2_STUDIES", str(tmp_path))
    never_run = _cli("study", "status", "s.digits_mlp")
    assert never_run.exit_code == 2 and f"run `hpo2 suite run {suite}` first" in never_run.output
    study = tmp_path / "q.yaml"
    study.write_text(yaml.safe_dump({"name": "q", "task": "digits_mlp", "budget": {"epochs": 1}}))
    result = _cli("suite", "run", str(study))
    assert result.exit_code == 2 and f"{study} is a study file" in result.output
    assert len(result.output.strip().splitlines()) == 1
