"""Warm start: an earlier study's best configurations per optimizer run first, fitted to this study's space."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from hpo2.interface.cli import app
from hpo2.study.config import OptimizerChoice
from hpo2.study.space import OptimizerSpace
from hpo2.study.warm_start import SOURCE_ATTR, fit_to_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
SGD_LR = (0.003, 0.05)  # the second study's narrower sgd range


def write(tmp_path: Path, name: str, **fields) -> Path:
    data = {"name": name, "task": "logreg_breast_cancer", "budget": {"epochs": 3}, "optimizers": ["sgd", "adam"],
            "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 6,
            "report": False, "confirm": False, "curvature_diagnostics": False, **fields}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def expected_warm_configs(earlier: optuna.Study, top_k: int) -> list[dict]:
    """The earlier study's top-k complete trials per optimizer (best first, best optimizer first), sgd's lr clipped."""
    ranked = sorted(earlier.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (-t.value, t.number))
    out: list[dict] = []
    per: dict[str, int] = {}
    for t in ranked:
        name = t.params["optimizer"]
        if per.get(name, 0) < top_k:
            per[name] = per.get(name, 0) + 1
            params = dict(t.params)
            if name == "sgd":
                params["sgd.lr"] = min(max(params["sgd.lr"], SGD_LR[0]), SGD_LR[1])
            if params not in out:
                out.append(params)
    return out


@pytest.mark.slow
def test_warm_start_runs_the_earlier_best_first_and_never_twice(tmp_path):
    first = run_cli("study", "run", str(write(tmp_path, "a")))
    assert first.exit_code == 0, first.output
    earlier = optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path / 'a.optuna.db'}")
    expected = expected_warm_configs(earlier, 2)
    assert len(expected) >= 3
    source = md5(tmp_path / "a.optuna.db")

    later = write(tmp_path, "b", optimizers=[{"name": "sgd", "ranges": {"lr": list(SGD_LR)}}, "adam"],
                  warm_start={"study": "a.yaml", "top_k": 2}, n_trials=len(expected) + 1)
    second = run_cli("study", "run", str(later))
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp_path / 'b.optuna.db'}")
    warm = study.trials[: len(expected)]
    assert [t.params for t in warm] == expected
    assert all(t.user_attrs[SOURCE_ATTR].startswith("a trial ") for t in warm)
    assert SOURCE_ATTR not in study.trials[len(expected)].user_attrs  # then the paper defaults

    # Resumed (also given the same source on the command line): nothing enqueued again.
    again = run_cli("study", "run", str(later), "--n-trials", str(len(expected) + 4),
                    "--warm-start", f"sqlite:///{tmp_path / 'a.optuna.db'}")
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp_path / 'b.optuna.db'}")
    assert len(study.trials) == len(expected) + 4
    assert sum(SOURCE_ATTR in t.user_attrs for t in study.trials) == len(expected)
    assert md5(tmp_path / "a.optuna.db") == source  # the earlier study is only read


def test_settings_outside_the_space_are_clipped_or_the_configuration_skipped():
    ranges = {"history_size": [50, 100], "lr": [0.01, 0.5], "line_search": ["strong_wolfe"]}
    choice = OptimizerChoice(name="lbfgs", ranges=ranges)
    space = OptimizerSpace("lbfgs", choice.space(), choice.fixed_settings())
    distributions = {"optimizer": CategoricalDistribution(["lbfgs"]), "lbfgs.history_size": IntDistribution(3, 100),
                     "lbfgs.lr": FloatDistribution(1e-3, 1.0, log=True),
                     "lbfgs.line_search": CategoricalDistribution(["none", "strong_wolfe"])}  # fmt: skip

    def trial(**params):
        full = {"optimizer": "lbfgs", **{f"lbfgs.{k}": v for k, v in params.items()}}
        return create_trial(params=full, distributions={k: distributions[k] for k in full}, value=0.5)

    params, clipped = fit_to_space(trial(history_size=40, lr=0.002, line_search="strong_wolfe"), space)
    assert params["lbfgs.history_size"] == 50 and params["lbfgs.lr"] == 0.01
    assert params["lbfgs.line_search"] == "strong_wolfe"
    assert len(clipped) == 2 and any("lbfgs.history_size 40 -> 50" in c for c in clipped)
    # not searched earlier: this study's paper default (history 100, inside its range)
    params, clipped = fit_to_space(trial(lr=0.1), space)
    assert params["lbfgs.history_size"] == 100 and params["lbfgs.line_search"] == "strong_wolfe" and clipped == []
    assert params["lbfgs.lr"] == 0.1
    # a categorical value this study does not allow: skipped
    params, why = fit_to_space(trial(history_size=70, line_search="none"), space)
    assert params is None and "lbfgs.line_search = 'none'" in why[0]


@pytest.mark.parametrize(("warm_start", "message"), [
    ("no_such_study", "warm_start.study = 'no_such_study': no study named"),
    ("sqlite:///{tmp}/missing.db", "missing.db': no such file"),
    ({"top_k": 2}, "warm_start: give study"),
    ({"study": "a", "top_k": 0}, "warm_start.top_k = 0"),
])  # fmt: skip
def test_bad_warm_start_names_the_field_and_exits_2(tmp_path, warm_start, message):
    if isinstance(warm_start, str):
        warm_start = warm_start.format(tmp=tmp_path)
    result = run_cli("study", "run", str(write(tmp_path, "b", warm_start=warm_start)))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def _tracking_like_store(path: Path) -> None:
    """A sqlite database with the tables of an MLflow store and none of Optuna's."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, experiment_id INTEGER)")


def _other_database(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")


@pytest.mark.parametrize(("make", "message"), [
    (_tracking_like_store, "is not an Optuna storage (it is an MLflow tracking store)"),
    (_other_database, "is not an Optuna storage (it is a database without Optuna's tables)"),
    (lambda path: path.write_text("not a database"), "cannot open"),
])  # fmt: skip
def test_a_warm_start_source_that_is_no_optuna_storage_is_refused_in_one_line_and_left_unchanged(
    tmp_path, make, message
):
    source = tmp_path / "source.db"
    make(source)
    before = md5(source)
    result = run_cli("study", "run", str(write(tmp_path, "b", warm_start=f"sqlite:///{source}")))
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert line.startswith("error: warm_start.storage") and str(source) in line and message in line, line
    assert "leave storage unset" not in line  # advice for the study's own storage, not for a warm start
    assert md5(source) == before
    assert not (tmp_path / "b.optuna.db").exists()  # nothing ran
