"""Bad input: one-paragraph errors naming the field and the fix, exit code 2,
nothing written; a fuzzed study-file parser never shows a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpo2.cli import app
from hpo2.optim.settings import SettingsError
from hpo2.study.config import StudyConfig, load_study_config

VALID = {"name": "b", "task": "digits_mlp", "n_trials": 2}

CASES = {
    "malformed yaml": ("name: b\ntask: [digits_mlp\n", "not valid YAML"),
    "wrong type": (yaml.safe_dump({**VALID, "n_trials": "ten"}), "n_trials = 'ten': Input should be a valid integer"),
    "unknown optimizer": (yaml.safe_dump({**VALID, "optimizers": ["adam", "newtn_cg"]}), "'newtn_cg' is not a known optimizer (did you mean 'newton_cg'?); allowed: newton_cg"),
    "unknown setting": (yaml.safe_dump({**VALID, "optimizers": [{"name": "adam", "fixed": {"learning_rate": 0.1}}]}), "unknown setting(s) learning_rate; allowed: lr"),
    "range low > high": (yaml.safe_dump({**VALID, "optimizers": [{"name": "sgd", "ranges": {"lr": [0.1, 0.001]}}]}), "ranges.lr = [0.1, 0.001]: give [low, high] with low < high"),
    "storage cannot be opened": (yaml.safe_dump({**VALID, "storage": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}), "storage: cannot open"),
    "task data missing": (yaml.safe_dump({**VALID, "task": {"name": "fmnist_mlp", "settings": {"data_dir": "/nonexistent"}}}), "apt-get install dataset-fashion-mnist"),
    "code in yaml": ("name: b\ntask: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_study_file_gives_one_paragraph_exit_2_and_writes_nothing(tmp_path, case):
    text, message = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["study", "run", str(path)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert message in output and output.startswith("error:")
    assert "Traceback" not in result.output and "\n\n" not in result.output.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no storage, no MLflow store, no pwned


def test_servers_bind_to_loopback_unless_asked():
    command = typer.main.get_command(app)
    dashboard = command.commands["dashboard"]
    host = next(p for p in dashboard.params if p.name == "host")
    assert host.default == "127.0.0.1"


FIELDS = list(StudyConfig.model_fields) + ["bogus", "optimizer", "settings"]
scalars = st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
random_files = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=8)
mutated_valid = st.fixed_dictionaries({}).flatmap(
    lambda _: st.dictionaries(st.sampled_from(FIELDS), values, max_size=3).map(lambda extra: {**VALID, **extra})
)
optimizer_entries = st.lists(
    st.sampled_from(["sgd", "adam", "newton_cg", "sophia", "x"])
    | st.fixed_dictionaries({"name": st.sampled_from(["sgd", "sophia", "lbfgs"])},
                            optional={"ranges": st.dictionaries(st.sampled_from(["lr", "rho", "history_size", "zz"]), values, max_size=2),
                                      "fixed": st.dictionaries(st.sampled_from(["lr", "estimator", "zz"]), values, max_size=2)}),
    max_size=3,
)  # fmt: skip
with_optimizers = optimizer_entries.map(lambda o: {**VALID, "optimizers": o})
documents = random_files | mutated_valid | with_optimizers | st.text(max_size=40) | st.lists(scalars, max_size=3)

FUZZ_DIR = Path(tempfile.mkdtemp(prefix="hpo2-fuzz-"))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_fuzzed_study_files_never_raise_anything_but_a_settings_error(document):
    path = FUZZ_DIR / "fuzz.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    try:
        config, _ = load_study_config(path)
    except SettingsError as exc:
        assert str(exc)  # a message for the user
    else:
        assert isinstance(config, StudyConfig)
