"""Samplers (hpo2.study.samplers): every allowed name builds its sampler and any other is refused; each runs a
study; the model samplers propose from the model, not at random; the QMC seed changes the design."""

from __future__ import annotations

import math
import statistics
from typing import get_args

import optuna
import pytest
from optuna.trial import TrialState
from optuna_integration import BoTorchSampler

from hpo2.errors import SettingsError
from hpo2.study.config import PER_OPTIMIZER_SAMPLERS, SamplerConfig, StudyConfig, load_study_config
from hpo2.study.runner import StudyRunner
from hpo2.study.sampler_registry import SAMPLERS
from hpo2.study.samplers import STREAMS_ATTR, PerOptimizerSampler, build_sampler, claim_stream, plain_sampler
from hpo2.study.space import SearchSpace
from tests.study.helpers import write_study


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.slow  # a whole study or a server
def test_each_sampler_runs_a_study(tmp_path, sampler):
    path = write_study(
        tmp_path,
        sampler={"name": sampler, "seed": 1, **({"n_startup_trials": 2} if sampler in ("gp", "botorch") else {})},
        n_trials=6,
        enqueue_defaults=False,
        curvature_diagnostics=False,
    )
    config, file = load_study_config(path)
    study = StudyRunner(config, file).run()
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 6
    assert any(t.state == TrialState.COMPLETE for t in finished)
    assert {t.params["optimizer"] for t in finished} <= {"sgd", "adam", "newton_cg"}


def _distance_to_optimum(name: str, settings: dict) -> float:
    optimum = {"sgd": {"lr": 1e-2, "momentum": 0.5}, "adam": {"lr": 3e-4, "beta1": 0.85, "beta2": 0.99}}[name]
    d = (math.log10(settings["lr"]) - math.log10(optimum["lr"])) ** 2
    return d + sum(((settings[k] - v) * 5) ** 2 for k, v in optimum.items() if k != "lr")


@pytest.mark.parametrize("model_sampler", ["gp", "botorch"])
@pytest.mark.slow  # a whole study or a server
def test_model_samplers_propose_settings_from_the_model_not_at_random(model_sampler):
    """On a cheap synthetic objective, the late proposals of GP/BoTorch for each
    optimizer's settings sit near that optimizer's optimum; random's do not."""

    def late_distances(sampler: str) -> list[float]:
        balanced = {"allocation": "balanced"} if sampler != "random" else {}
        config = StudyConfig(name="s", task="digits_mlp", optimizers=["sgd", "adam"],
                             sampler={"name": sampler, "seed": 3, "n_startup_trials": 5, **balanced}, n_trials=30)
        space = SearchSpace(config)
        study = optuna.create_study(direction="minimize", sampler=build_sampler(config, space))
        study.optimize(lambda trial: _distance_to_optimum(*space.suggest(trial)), n_trials=30)
        late = study.trials[-10:]
        assert {t.params["optimizer"] for t in late} == {"sgd", "adam"}  # balanced allocation
        return [t.value for t in late]

    model, random = late_distances(model_sampler), late_distances("random")
    assert statistics.median(model) < 0.2 * statistics.median(random)
    assert statistics.median(model) < 0.2


def test_qmc_sampler_seed_changes_the_design():
    from hpo2.study.config import SamplerConfig
    from hpo2.study.samplers import plain_sampler

    def first_points(seed: int) -> list[float]:
        study = optuna.create_study(sampler=plain_sampler(SamplerConfig(name="qmc"), seed))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=4)
        return [t.params["x"] for t in study.trials]

    assert first_points(0) == first_points(0)
    assert first_points(0) != first_points(1)


EXPECTED = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler, "botorch": BoTorchSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "random": optuna.samplers.RandomSampler,
            "qmc": optuna.samplers.QMCSampler}  # fmt: skip


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_each_allowed_name_builds_its_own_sampler() -> None:
    names = get_args(SamplerConfig.model_fields["name"].annotation)
    assert names == tuple(SAMPLERS)  # the study file's names are the registry's, in its order
    assert set(names) == set(EXPECTED)
    for name in names:
        assert type(plain_sampler(SamplerConfig(name=name), seed=0)) is EXPECTED[name], name


#: what each registry entry must say: per optimizer?  its own startup trials (Optuna's defaults, hpo2's for
#: botorch and cmaes)?  one design for every process?  several objectives?
DECLARED = {"tpe": (False, 10, False, True), "gp": (True, 5, False, True), "botorch": (True, 5, False, True),
            "cmaes": (True, 1, False, False), "random": (False, 0, False, True), "qmc": (False, 0, True, True)}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_sampler_registry_is_what_config_and_build_sampler_read() -> None:
    """Issue 27, 5: the sampler names live in one place; the schema, the build function and the per-optimizer
    wrapping all follow the registry's entries."""
    assert {name: (s.per_optimizer, s.startup, s.one_design, s.multi_objective) for name, s in SAMPLERS.items()} \
        == DECLARED
    assert tuple(name for name, s in SAMPLERS.items() if s.per_optimizer) == PER_OPTIMIZER_SAMPLERS
    for name, spec in SAMPLERS.items():
        config = StudyConfig(name="s", task="digits_mlp", optimizers=["sgd"], sampler={"name": name})
        built = build_sampler(config, SearchSpace(config), stream=1)
        assert isinstance(built, PerOptimizerSampler) == spec.per_optimizer, name
        wrapped = built._make_sampler(0, 3) if isinstance(built, PerOptimizerSampler) else built
        assert type(wrapped) is EXPECTED[name], name
        if name in ("gp", "botorch", "cmaes", "tpe"):  # the startup the wrapper asks for reaches the sampler
            assert wrapped._n_startup_trials == (3 if spec.per_optimizer else spec.startup), name
        if not spec.multi_objective:
            with pytest.raises(ValueError, match=f"sampler.name = '{name}' optimises one objective"):
                StudyConfig(name="s", task="digits_mlp", sampler={"name": name},
                            objective=["valid_loss", "wall_seconds"])
    qmc = SamplerConfig(name="qmc", seed=5)
    first, later = (build_sampler(StudyConfig(name="s", task="digits_mlp", sampler=qmc), SearchSpace(
        StudyConfig(name="s", task="digits_mlp")), stream) for stream in (0, 3))
    assert first._seed == later._seed == 5  # one design: every stream continues the same one


def test_the_study_package_face_names_its_public_parts_without_importing_them_early() -> None:
    import subprocess
    import sys

    import hpo2.study

    assert hpo2.study.StudyRunner is StudyRunner and hpo2.study.StudyConfig is StudyConfig
    assert sorted(hpo2.study.__all__) == sorted(hpo2.study._HOMES)
    assert all(getattr(hpo2.study, name) is not None for name in hpo2.study.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'Runner'"):
        hpo2.study.Runner  # noqa: B018 -- the attribute access is the test
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hpo2.study.config; print(sorted(m for m in ('optuna', 'mlflow') "
         "if m in sys.modules))"], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"  # the study-file schema stays light


def test_an_unknown_name_is_a_clear_error_not_cmaes() -> None:
    config = SamplerConfig.model_construct(name="cmaess", n_startup_trials=None)  # past validation, as a caller could
    with pytest.raises(
        SettingsError,
        match=r"sampler.name: 'cmaess' is not a known sampler \(did you mean 'cmaes'\?\); "
        r"allowed: tpe, gp, botorch, cmaes, random, qmc",
    ):
        plain_sampler(config, seed=0)


def _draws(storage: optuna.storages.BaseStorage, config: StudyConfig) -> list[dict]:
    """Two processes asking trials in turn, then a resume asking three more: each opens the
    study with a sampler of its own and claims its sampler stream as :meth:`StudyRunner.open` does."""
    space = SearchSpace(config)

    def join() -> optuna.Study:
        study = optuna.create_study(study_name="s", storage=storage, direction="minimize", load_if_exists=True)
        study.sampler = build_sampler(config, space, claim_stream(study))
        return study

    def draw(study: optuna.Study) -> dict:
        trial = study.ask()
        study.tell(trial, _distance_to_optimum(*space.suggest(trial)))
        return trial.params

    first, second = join(), join()
    drawn = [draw(study) for study in (first, second) * 3]
    resumed = join()
    return drawn + [draw(resumed) for _ in range(3)]


@pytest.mark.parametrize("sampler", ["random", "tpe", pytest.param("gp", marks=pytest.mark.slow), "cmaes", "qmc"])
def test_two_processes_and_a_resume_each_draw_fresh_proposals_reproducibly_from_the_seed(sampler):
    """Replayed draws (issue 26, 9.1): every process seeded alike proposed what the others did."""
    config = StudyConfig(name="s", task="digits_mlp", optimizers=["sgd"], sampler={"name": sampler, "seed": 0},
                         n_trials=9, enqueue_defaults=False)  # fmt: skip
    storage = optuna.storages.InMemoryStorage()
    drawn = _draws(storage, config)
    assert len({tuple(sorted(params.items())) for params in drawn}) == 9, drawn
    assert _draws(optuna.storages.InMemoryStorage(), config) == drawn  # the same runs, the same seed: the same trials
    assert storage.get_study_system_attrs(storage.get_study_id_from_name("s"))[STREAMS_ATTR] == 3
