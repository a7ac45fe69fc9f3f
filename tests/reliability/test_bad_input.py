"""Bad input: one-paragraph errors naming the field and the fix, exit code 2,
nothing written; a fuzzed study-file parser never shows a traceback."""

from __future__ import annotations

import hashlib
import math
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpo2.errors import SettingsError
from hpo2.interface.cli import app
from hpo2.optim.registry import load_config_file, parse_optimizer_config
from hpo2.optim.settings import FloatRange
from hpo2.study.config import StudyConfig, load_study_config
from hpo2.train import TrainConfig
from hpo2.train.config import load_train_config

VALID = {"name": "b", "task": "digits_mlp", "n_trials": 2}

CASES = {
    "malformed yaml": (
        "name: b\ntask: [digits_mlp\n",
        "not valid YAML: {tmp}/bad.yaml, line 3, column 1: while parsing a flow sequence",
    ),
    "wrong type": (yaml.safe_dump({**VALID, "n_trials": "ten"}), "n_trials = 'ten': Input should be a valid integer"),
    "unknown optimizer": (
        yaml.safe_dump({**VALID, "optimizers": ["adam", "newtn_cg"]}),
        "'newtn_cg' is not a known optimizer (did you mean 'newton_cg'?); allowed: newton_cg",
    ),
    "unknown setting": (
        yaml.safe_dump({**VALID, "optimizers": [{"name": "adam", "fixed": {"learning_rate": 0.1}}]}),
        "unknown setting(s) learning_rate; allowed: lr",
    ),
    "range low > high": (
        yaml.safe_dump({**VALID, "optimizers": [{"name": "sgd", "ranges": {"lr": [0.1, 0.001]}}]}),
        "ranges.lr = [0.1, 0.001]: give [low, high] with low < high",
    ),
    "storage cannot be opened": (
        yaml.safe_dump({**VALID, "storage": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}),
        "storage: cannot open",
    ),
    "task data missing": (
        yaml.safe_dump({**VALID, "task": {"name": "fmnist_mlp", "settings": {"data_dir": "/nonexistent"}}}),
        "apt-get install dataset-fashion-mnist",
    ),
    "code in yaml": ("name: b\ntask: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
    "typo'd key": (
        yaml.safe_dump({**VALID, "n_trial": 3}),
        "n_trial = 3: unknown key (did you mean 'n_trials'?); allowed: name, task",
    ),
    "typo'd budget key": (
        yaml.safe_dump({**VALID, "budget": {"epoch": 1}}),
        "budget.epoch = 1: unknown key (did you mean 'epochs'?)",
    ),
    "typo'd setting": (
        yaml.safe_dump({**VALID, "optimizers": [{"name": "sgd", "fixed": {"momentm": 0.5}}]}),
        "unknown setting(s) momentm (did you mean 'momentum'?)",
    ),
    "too many trials": (
        "name: b\ntask: digits_mlp\nn_trials: 1e11\n",
        "n_trials = 100000000000.0: Input should be less than or equal to 1000000",
    ),
    "too many epochs": (
        yaml.safe_dump({**VALID, "budget": {"epochs": 1e9}}),
        "budget.epochs = 1000000000.0: Input should be less than or equal to 100000",
    ),
    "infinite epochs": (
        yaml.safe_dump({**VALID, "budget": {"epochs": float("inf")}}),
        "budget.epochs = inf: Input should be a finite number",
    ),
    "range outside the setting": (
        yaml.safe_dump({**VALID, "optimizers": [{"name": "sgd", "ranges": {"momentum": [0.5, 1.5]}}]}),
        "ranges.momentum = [0.5, 1.5]: high = 1.5 is not a valid momentum (Input should be less than 1)",
    ),
    "range below the setting": (
        yaml.safe_dump({**VALID, "optimizers": [{"name": "sophia", "ranges": {"hessian_refresh": [0, 5]}}]}),
        "ranges.hessian_refresh = [0, 5]: low = 0 is not a valid hessian_refresh "
        "(Input should be greater than or equal to 1)",
    ),
    "infinite range": (
        "name: b\ntask: digits_mlp\noptimizers: [{name: sgd, ranges: {lr: [1e-4, .inf]}}]\n",
        "ranges.lr = [0.0001, inf]: both ends must be finite numbers",
    ),
    "long name": (yaml.safe_dump({**VALID, "name": "n" * 250}), "250 characters; at most 100"),
    "train config given to study run": (
        yaml.safe_dump({"task": {"name": "digits_mlp"}, "optimizer": {"name": "sgd"}}),
        "is a `hpo2 train` config (one optimizer, no study name): train with `hpo2 train --config {tmp}/bad.yaml`",
    ),
    "file store": (
        yaml.safe_dump({**VALID, "tracking_uri": "file:///{tmp}/mlruns"}),
        "MLflow 3 refuses the file store; use a sqlite database",
    ),
    "MLflow store not writable": (
        yaml.safe_dump({**VALID, "tracking_uri": "sqlite:///{tmp}/bad.yaml/mlflow.db"}),
        "tracking_uri: cannot write the sqlite database 'sqlite:///{tmp}/bad.yaml/mlflow.db' (Not a directory)",
    ),
    "MLflow store in a missing folder": (
        yaml.safe_dump({**VALID, "tracking_uri": "sqlite:///{tmp}/missing/mlflow.db"}),
        "tracking_uri: cannot write the sqlite database 'sqlite:///{tmp}/missing/mlflow.db' (No such file or "
        "directory)",
    ),
    "MLflow database server unreachable": (  # port 1: refused at once; the Optuna study must not be created
        yaml.safe_dump({**VALID, "tracking_uri": "postgresql://nobody:secret@127.0.0.1:1/none"}),
        "tracking_uri: cannot connect to the database 'postgresql://nobody:***@127.0.0.1:1/none' (OperationalError: ",
    ),
    "study folder not writable": (
        yaml.safe_dump({**VALID, "storage": "sqlite:///{tmp}/bad.yaml/b.db"}),
        "storage: cannot write the sqlite database",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_study_file_gives_one_paragraph_exit_2_and_writes_nothing(tmp_path, case):
    text, message = (part.replace("{tmp}", str(tmp_path)) for part in CASES[case])
    _refused_and_nothing_written(tmp_path, text, [], message)


def _refused_and_nothing_written(tmp_path: Path, study_text: str, options: list[str], message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(study_text)
    result = CliRunner().invoke(app, ["study", "run", str(path), *options])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert message in output and output.startswith("error:"), output
    assert "Traceback" not in result.output and "\n\n" not in result.output.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no storage, no MLflow store, no pwned


@pytest.mark.parametrize(
    "options,message",
    [
        (
            ["--n-trials", "0"],
            "(with command-line --n-trials): n_trials = 0: Input should be greater than or equal to 1",
        ),
        (["--n-trials", "-1"], "n_trials = -1: Input should be greater than or equal to 1"),
        (["--n-trials", "2000000"], "n_trials = 2000000: Input should be less than or equal to 1000000"),
        (["--timeout", "0"], "(with command-line --timeout): timeout = 0.0: Input should be greater than 0"),
        (["--timeout", "-5"], "timeout = -5.0: Input should be greater than 0"),
        (["--timeout", "inf"], "timeout = inf: Input should be a finite number"),
    ],
)
def test_command_line_overrides_are_validated_like_the_file(tmp_path, options, message):
    _refused_and_nothing_written(tmp_path, yaml.safe_dump(VALID), options, message)


def test_a_read_only_study_database_is_refused_before_anything_runs(tmp_path):
    db = tmp_path / "ro.db"
    sqlite3.connect(db).close()
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**VALID, "storage": f"sqlite:///file:{db}?mode=ro&uri=true"}))
    result = CliRunner().invoke(app, ["study", "run", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "storage: cannot write the sqlite database" in " ".join(result.output.split())
    assert "attempt to write a readonly database" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro.db", "s.yaml"]


@pytest.mark.slow  # an MLflow store (its tables take seconds to create, once per session)
def test_a_warm_start_from_an_mlflow_store_is_refused_and_the_store_left_unchanged(tmp_path, mlflow_db_template):
    store = tmp_path / "mlflow.db"
    shutil.copy(mlflow_db_template, store)
    before = hashlib.md5(store.read_bytes()).hexdigest()
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**VALID, "warm_start": f"sqlite:///{store}"}))
    result = CliRunner().invoke(app, ["study", "run", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert " ".join(result.output.split()).startswith(
        f"error: warm_start.storage = 'sqlite:///{store}' is not an Optuna storage (it is an MLflow tracking store)"
    )
    assert hashlib.md5(store.read_bytes()).hexdigest() == before


def test_an_unreachable_storage_in_status_is_one_line(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(VALID))
    for command in ("status", "best", "report"):
        result = CliRunner().invoke(app, ["study", command, str(tmp_path / "s.yaml"), "--storage", "postgresql+psycopg2://u:pw@127.0.0.1:1/none"])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert " ".join(result.output.split()).startswith("error: storage: cannot open 'postgresql+psycopg2://u:***@127.0.0.1:1/none'")


def test_a_study_file_given_to_train_names_the_right_command(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(VALID))
    result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "s.yaml")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (
        f"is a study file (it has n_trials and no optimizer): run it with `hpo2 study run {tmp_path}/s.yaml`"
        in " ".join(result.output.split())
    )


def test_yaml_1_2_numbers_are_read_as_numbers_everywhere(tmp_path):
    """``1e-4`` is a float in ranges, fixed settings, budgets and train configs (YAML 1.1 made it a string)."""
    study = tmp_path / "s.yaml"
    study.write_text("name: b\ntask: digits_mlp\nbudget: {seconds: 1e2, grad_equivalents: 5E3}\ntimeout: 6e2\n"
                     "optimizers:\n  - {name: sgd, ranges: {lr: [1e-4, 1e-2]}, fixed: {momentum: 5e-1}}\n")
    config, _ = load_study_config(study)
    assert config.optimizers[0].space()["lr"] == FloatRange(1e-4, 1e-2, log=True)
    assert config.optimizers[0].fixed == {"momentum": 0.5} and config.timeout == 600.0
    assert (config.budget.seconds, config.budget.grad_equivalents) == (100.0, 5000.0)
    train = tmp_path / "t.yaml"
    train.write_text(
        "task: {name: digits_mlp}\noptimizer: {name: adam, settings: {lr: 1e-3, eps: 1e-8}}\nbudget: {epochs: 1E0}\n"
    )
    assert load_train_config(train).budget.epochs == 1.0
    spec, settings = parse_optimizer_config(train)
    assert (settings.lr, settings.eps) == (1e-3, 1e-8)
    assert load_config_file(train)["optimizer"]["settings"]["lr"] == 1e-3
    special = tmp_path / "special.yaml"
    special.write_text("a: .inf\nb: -.inf\nc: .nan\nd: 12\ne: '1e-4'\nf: 1.5\n")
    values = load_config_file(special)
    assert values["a"] == math.inf and values["b"] == -math.inf and math.isnan(values["c"])
    assert values["d"] == 12 and isinstance(values["d"], int) and values["e"] == "1e-4" and values["f"] == 1.5


def test_servers_bind_to_loopback_unless_asked():
    command = typer.main.get_command(app)
    dashboard = command.commands["dashboard"]
    host = next(p for p in dashboard.params if p.name == "host")
    assert host.default == "127.0.0.1"


FIELDS = list(StudyConfig.model_fields) + ["bogus", "optimizer", "settings"]
scalars = st.none() | st.booleans() | st.integers(-5, 100) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(-3, 3), inner, max_size=4)
    ),
    max_leaves=12,
)
random_files = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=8)
mutated_valid = st.fixed_dictionaries({}).flatmap(
    lambda _: st.dictionaries(st.sampled_from(FIELDS), values, max_size=3).map(lambda extra: {**VALID, **extra})
)
optimizer_entries = st.lists(
    st.sampled_from(["sgd", "adam", "newton_cg", "sophia", "x"])
    | st.fixed_dictionaries({"name": st.sampled_from(["sgd", "sophia", "lbfgs"])},
                            optional={
                                "ranges": st.dictionaries(
                                    st.sampled_from(["lr", "rho", "history_size", "zz"]), values, max_size=2
                                ),
                                "fixed": st.dictionaries(
                                    st.sampled_from(["lr", "estimator", "zz"]), values, max_size=2
                                ),
                            }),
    max_size=3,
)  # fmt: skip
with_optimizers = optimizer_entries.map(lambda o: {**VALID, "optimizers": o})
documents = random_files | mutated_valid | with_optimizers | st.text(max_size=40) | st.lists(scalars, max_size=3)

FUZZ_DIR = Path(tempfile.mkdtemp(prefix="hpo2-fuzz-"))
# 1,000 fuzzed cases in all (500 study files, 300 train configs, 150 overrides in-process,
# 50 through the CLI); derandomized so CI sees the same cases every run.
FUZZ = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow]}


def _names_the_field(message: str, document: object, fields: list[str], path: Path) -> bool:
    """A refusal says what is wrong first: the file itself (YAML syntax, not a mapping,
    the wrong kind of file), or the field path, a key of the document or of the schema."""
    if message.startswith(("config file", f"{path} is a")):
        return True
    rest = message.removeprefix(f"{path}: ")
    keys = [str(k) for k in document] if isinstance(document, dict) else []
    return any(name and rest.startswith(name) for name in [*keys, *fields, "(top level)"])


def _write(document: object, name: str) -> Path:
    path = FUZZ_DIR / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


@settings(max_examples=500, **FUZZ)
@given(documents)
@pytest.mark.slow  # a whole study or a server
def test_fuzzed_study_files_never_raise_anything_but_a_settings_error(document):
    path = _write(document, "fuzz.yaml")
    try:
        config, _ = load_study_config(path)
    except SettingsError as exc:
        assert _names_the_field(str(exc), document, FIELDS, path), str(exc)
    else:
        assert isinstance(config, StudyConfig)


TRAIN_FIELDS = list(TrainConfig.model_fields) + ["bogus", "n_trials", "optimizers", "name"]
VALID_TRAIN = {"task": {"name": "digits_mlp"}, "optimizer": {"name": "sgd", "settings": {"lr": 0.1}}}
train_sections = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["sgd", "adam", "sophia", "lbfgs", "digits_mlp", "nope"]) | values,
    "settings": st.dictionaries(
        st.sampled_from(["lr", "momentum", "eps", "estimator", "batch_size", "n_train", "data_dir", "zz"]),
        values,
        max_size=3,
    ) | values,
})  # fmt: skip
train_documents = (
    st.dictionaries(st.sampled_from(TRAIN_FIELDS), values, max_size=6)
    | st.dictionaries(st.sampled_from(TRAIN_FIELDS), values, max_size=3).map(lambda extra: {**VALID_TRAIN, **extra})
    | st.fixed_dictionaries({"task": train_sections, "optimizer": train_sections},
                            optional={"budget": st.dictionaries(
                                st.sampled_from(["epochs", "steps", "seconds", "grad_equivalents", "epoch"]),
                                values,
                                max_size=2,
                            )})
    | st.text(max_size=40)
)  # fmt: skip


@settings(max_examples=300, **FUZZ)
@given(train_documents)
@pytest.mark.slow  # a whole study or a server
def test_fuzzed_train_configs_never_raise_anything_but_a_settings_error(document):
    path = _write(document, "train.yaml")
    try:
        config = load_train_config(path)
    except SettingsError as exc:
        assert _names_the_field(str(exc), document, TRAIN_FIELDS + ["settings", "name"], path), str(exc)
    else:
        assert isinstance(config, TrainConfig)


OVERRIDES = {"n_trials": st.none() | st.integers(), "timeout": st.none() | st.floats(),
             "jobs": st.none() | st.integers(-3, 10**6),
             "device": st.none() | st.text(max_size=8), "storage": st.none() | st.text(max_size=20)}  # fmt: skip


@settings(max_examples=150, **FUZZ)
@given(st.fixed_dictionaries({}, optional=OVERRIDES))
def test_fuzzed_overrides_are_validated_with_the_file(overrides):
    path = _write(VALID, "overrides.yaml")
    try:
        config, _ = load_study_config(path, overrides)
    except SettingsError as exc:
        given_keys = [k for k, v in overrides.items() if v is not None]
        assert any(f"{k} = " in str(exc) for k in given_keys) and "with command-line" in str(exc), str(exc)
    else:
        for key, value in overrides.items():
            assert value is None or getattr(config, key) == value


bad_counts = (
    st.integers(max_value=0)
    | st.integers(min_value=10**6 + 1)
    | st.text(min_size=1, max_size=6).filter(lambda t: not t.strip().lstrip("-").isdigit())
)
bad_seconds = (
    st.floats(max_value=0)
    | st.sampled_from(["inf", "nan", "-inf", "1e99"])
    | st.text(min_size=1, max_size=6).filter(lambda t: not t.strip().replace(".", "").lstrip("-").isdigit())
)


@settings(max_examples=50, **FUZZ)
@given(
    st.sampled_from(["--n-trials", "--timeout"]).flatmap(
        lambda o: st.tuples(st.just(o), bad_counts if o == "--n-trials" else bad_seconds)
    )
)
def test_fuzzed_bad_command_line_values_exit_2_naming_the_option(option_value):
    option, value = option_value
    path = _write(VALID, "cli.yaml")
    result = CliRunner().invoke(app, ["study", "run", str(path), option, str(value)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    field = option.removeprefix("--")
    assert option in result.output or f"{field.replace('-', '_')} = " in result.output, result.output


def test_every_mistake_of_a_file_is_in_one_message_naming_the_file(tmp_path):
    """Three mistakes, one round: the schema's errors and the task's settings together."""
    study = tmp_path / "three.yaml"
    study.write_text("name: three\ntask: {name: digits_mlp, settings: {n_trian: 5}}\nn_trials: 0\n"
                     "budget: {epoch: 3}\n")
    with pytest.raises(SettingsError) as caught:
        load_study_config(study)
    message = str(caught.value)
    assert message.startswith(f"{study}: ") and "\n" not in message
    for part in ("budget.epoch = 3: unknown key (did you mean 'epochs'?)", "n_trials = 0",
                 "task.settings: unknown setting(s) n_trian (did you mean 'n_train'?)"):
        assert part in message, message
    study.write_text("name: three\ntask: {name: digits_mlp, settings: {n_trian: 5}}\n")
    with pytest.raises(SettingsError, match=rf"^{study}: task.settings: unknown setting\(s\) n_trian"):
        load_study_config(study)
    train = tmp_path / "train.yaml"
    train.write_text("task: {name: digits_mlp, settings: {n_trian: 5}}\noptimizer: {name: adam}\nbudget: {epoch: 1}\n")
    with pytest.raises(SettingsError, match=rf"^{train}: budget.epoch = 1: .*; task.settings: unknown setting"):
        load_train_config(train)


def test_more_samples_than_a_split_holds_is_refused_when_the_study_opens(tmp_path):
    from hpo2.study.runner import StudyRunner

    study = tmp_path / "big.yaml"
    study.write_text("name: big\ntask: {name: digits_mlp, settings: {n_train: 1000000}}\nn_trials: 1\n")
    config, path = load_study_config(study)
    with pytest.raises(SettingsError, match=rf"^{study}: task.settings.n_train = 1000000: digits_mlp has 1200 train "
                                            r"samples; give at most 1200"):
        StudyRunner(config, path).open()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml"]  # refused before any store is written


def test_hessian_free_refuses_zero_damping_with_its_preconditioner_in_one_line():
    """Zero damping divides by zero in the preconditioner: refused at load; undamped Newton without it is fine."""
    with pytest.raises(SettingsError, match=r"damping = 0 with preconditioner: true divides by zero") as caught:
        parse_optimizer_config({"name": "hessian_free", "settings": {"damping": 0}})
    assert "\n" not in str(caught.value)
    parse_optimizer_config({"name": "hessian_free", "settings": {"damping": 0, "preconditioner": False}})


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:x", "CPU"])
def test_a_device_that_is_not_one_is_refused_in_one_line(tmp_path, device):
    """--device bogus (and device: meta) gave a torch traceback in the first trial."""
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ntask: digits_mlp\nn_trials: 1\n")
    result = CliRunner().invoke(app, ["study", "run", str(study), "--device", device], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"device = {device!r}: allowed: auto, cpu, cuda, cuda:N" in result.output
    train = tmp_path / "t.yaml"
    train.write_text(f"task: digits_mlp\noptimizer: adam\ndevice: {device}\n")
    with pytest.raises(SettingsError, match=rf"device = '{device}': allowed"):
        load_train_config(train)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "t.yaml"]
