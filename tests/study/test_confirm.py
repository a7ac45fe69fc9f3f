"""The confirmation stage's choice (hpo2.study.confirm) on in-memory studies with a synthetic,
deliberately noisy objective: each configuration has a true mean, and a seed adds its noise."""

from __future__ import annotations

import statistics

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo2.errors import SettingsError
from hpo2.study.config import StudyConfig, load_study_config
from hpo2.study.confirm import (
    CONFIRM_OF_ATTR,
    confirmation_left,
    export_block,
    finalists,
    open_confirm_study,
    plan_confirmation,
    summarize,
    t_interval,
)
from hpo2.study.results import export_config, target_text
from hpo2.study.space import SearchSpace
from hpo2.study.trial_reporter import SEED_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)

TARGET = "valid accuracy >= 0.96"


def _config(top_k: int, seeds: int) -> StudyConfig:
    return StudyConfig(name="noisy", task="logreg_breast_cancer", optimizers=["sgd", "adam"],
                       confirm={"top_k": top_k, "seeds": seeds})  # fmt: skip


def _run(study: optuna.Study, space: SearchSpace, objective, params: dict | None = None) -> None:
    """One trial: enqueued ``params`` (or the confirmation's own), suggested as the runner does, told its value."""
    if params is not None:
        study.enqueue_trial(params)
    trial = study.ask()
    name, settings = space.suggest(trial)
    value, seconds_to_target, total = objective(name, settings, trial.user_attrs.get(SEED_ATTR, 0))
    trial.set_user_attr("hpo2.time_to_target_seconds", seconds_to_target)
    trial.set_user_attr("hpo2.time_to_target_grad_equivalents", None if seconds_to_target is None else total / 2)
    trial.set_user_attr("hpo2.grad_equivalents", total)
    study.tell(trial, value)


def _study_with_confirmation(config: StudyConfig, configs: list[dict], objective):
    """A search over ``configs`` (seed 0), then every planned confirmation run."""
    space = SearchSpace(config)
    search = optuna.create_study(study_name=config.name, direction="maximize")
    for params in configs:
        _run(search, space, objective, params)
    confirm = open_confirm_study(search)
    planned = plan_confirmation(search, confirm, config)
    for _ in range(planned):
        _run(confirm, space, objective)
    return search, confirm, planned


# the true mean of each configuration, its noise per seed (seed order: the search's 0, then the new seeds)
LUCKY = {"optimizer": "sgd", "sgd.lr": 0.5, "sgd.momentum": 0.9}  # mean 0.80, one lucky draw in the search
STEADY = {"optimizer": "adam", "adam.lr": 0.01, "adam.beta1": 0.9, "adam.beta2": 0.999}  # mean 0.90, tight
POOR = {"optimizer": "sgd", "sgd.lr": 0.001, "sgd.momentum": 0.5}
SEEDS = [1_000_000 + i for i in range(5)]


def _noisy(name: str, settings: dict, seed: int) -> tuple[float, float | None, float]:
    """LUCKY: 0.97 in the search and 0.99 on the first new seed (both the best single values), 0.80 on average."""
    if name == "sgd" and settings["lr"] == 0.5:
        draws = dict(zip([0, *SEEDS], [0.97, 0.99, 0.72, 0.75, 0.78, 0.76], strict=True))
    elif name == "adam":
        draws = dict(zip([0, *SEEDS], [0.90, 0.90, 0.91, 0.89, 0.90, 0.91], strict=True))
    else:
        draws = dict.fromkeys([0, *SEEDS], 0.5)
    return draws[seed], 1.0, 100.0


def test_the_winner_is_chosen_by_the_mean_over_new_seeds_not_by_a_lucky_single_value():
    config = _config(top_k=2, seeds=5)
    search, confirm, planned = _study_with_confirmation(config, [LUCKY, STEADY, POOR], _noisy)
    assert search.best_trial.params == LUCKY  # the search alone picks the lucky one
    assert [t.params for t in finalists(search, 2)] == [LUCKY, STEADY]
    assert planned == 2 * 5 and confirm.user_attrs["hpo2.confirm_seeds"] == SEEDS  # new seeds, none the search's 0

    outcome = summarize(search, confirm, "valid_metric", TARGET)
    assert outcome is not None and outcome.done
    assert outcome.winner is not None and outcome.winner.trial.params == STEADY
    assert outcome.winner.values == [0.90, 0.91, 0.89, 0.90, 0.91]
    lucky = next(c for c in outcome.configs if c.trial.params == LUCKY)
    assert max(lucky.values) > max(outcome.winner.values)  # the best single value is the lucky one's
    assert outcome.recommended is outcome.winner
    assert confirmation_left(search, config) == 0


def test_t_interval_matches_the_textbook_formula():
    values = [0.88, 0.90, 0.92, 0.95]
    mean, std, low, high = t_interval(values)
    half = 3.182446305284263 * statistics.stdev(values) / 2  # t_{0.975, 3}
    assert mean == pytest.approx(0.9125) and std == pytest.approx(statistics.stdev(values))
    assert (low, high) == pytest.approx((mean - half, mean + half))


# ties: WINNER has the best mean, CHEAP overlaps it and reaches the target sooner, FAR is clearly worse
WINNER = {"optimizer": "adam", "adam.lr": 0.01, "adam.beta1": 0.9, "adam.beta2": 0.999}
CHEAP = {"optimizer": "sgd", "sgd.lr": 0.1, "sgd.momentum": 0.9}
FAR = {"optimizer": "sgd", "sgd.lr": 0.001, "sgd.momentum": 0.5}


def _tied(name: str, settings: dict, seed: int) -> tuple[float, float | None, float]:
    offset = {0: 0.0, 1_000_000: -0.02, 1_000_001: 0.0, 1_000_002: 0.02}[seed]
    if name == "adam":
        return 0.905 + offset, 30.0, 600.0  # best mean, slow to the target
    if settings["lr"] == 0.1:
        return 0.90 + offset, 1.0, 20.0  # a tie, 30x sooner at the target
    return 0.6 + offset / 10, 0.5, 10.0  # cheapest of all, but no tie: never recommended


def test_overlapping_intervals_are_ties_and_the_cheaper_tie_is_recommended_with_the_reason():
    config = _config(top_k=3, seeds=3)
    search, confirm, _ = _study_with_confirmation(config, [WINNER, CHEAP, FAR], _tied)
    outcome = summarize(search, confirm, "valid_metric", TARGET)
    assert outcome is not None and outcome.winner is not None and outcome.recommended is not None
    assert outcome.winner.trial.params == WINNER
    assert [c.trial.params for c in outcome.ties] == [CHEAP]
    assert outcome.recommended.trial.params == CHEAP
    assert "tied with the best mean" in outcome.reason and "cheaper" in outcome.reason
    assert f"time to target ({TARGET}) 1 s against 30 s" in outcome.reason


def test_the_export_carries_mean_std_seeds_and_the_target():
    config = _config(top_k=3, seeds=3)
    search, confirm, _ = _study_with_confirmation(config, [WINNER, CHEAP, FAR], _tied)
    outcome = summarize(search, confirm, "valid_metric", target_text(config))
    pick = outcome.recommended
    exported = export_config(config, pick.trial, export_block(outcome, pick.trial))
    block = exported["study"]["confirmation"]
    runs = [t for t in confirm.trials if t.user_attrs[CONFIRM_OF_ATTR] == pick.trial.number]
    values = [t.value for t in runs]
    assert block["mean"] == pytest.approx(statistics.fmean(values))
    assert block["std"] == pytest.approx(statistics.stdev(values))
    assert block["ci95"][0] < block["mean"] < block["ci95"][1]
    assert block["seeds"] == [1_000_000, 1_000_001, 1_000_002] and block["values"] == values
    assert block["target"] == target_text(config) == "valid accuracy >= 0.96"
    assert block["time_to_target_seconds"] == pytest.approx(1.0)
    assert block["winner_trial"] == outcome.winner.trial.number and block["ties"] == [pick.trial.number]
    assert exported["optimizer"]["name"] == "sgd"


def test_a_finalist_that_diverged_on_a_seed_cannot_win_and_an_unfinished_stage_names_no_winner():
    config = _config(top_k=3, seeds=3)
    search, confirm, _ = _study_with_confirmation(config, [WINNER, CHEAP, FAR], _tied)
    diverged = next(t for t in confirm.trials if t.params == WINNER)
    confirm.enqueue_trial(WINNER, user_attrs={CONFIRM_OF_ATTR: diverged.user_attrs[CONFIRM_OF_ATTR],
                                              SEED_ATTR: 7, "hpo2.status": "diverged"})  # fmt: skip
    outcome = summarize(search, confirm, "valid_metric", TARGET)
    assert not outcome.done and outcome.winner is None  # a run still waits
    assert confirmation_left(search, config) == 1
    trial = confirm.ask()
    confirm.tell(trial, state=TrialState.PRUNED)
    outcome = summarize(search, confirm, "valid_metric", TARGET)
    assert outcome.done and outcome.winner is not None and outcome.winner.trial.params == CHEAP
    winner_row = next(c for c in outcome.configs if c.trial.params == WINNER)
    assert not winner_row.eligible and "seed 7: diverged" in winner_row.failed[0]


@pytest.mark.parametrize(("fields", "message"), [
    ({"confirm": {"seeds": 1}}, "confirm.seeds = 1: Input should be greater than or equal to 2"),
    ({"confirm": {"top_k": -1}}, "confirm.top_k = -1: Input should be greater than or equal to 0"),
    ({"name": "x.confirm"}, "a name ending in '.confirm' is taken by a study's confirmation stage"),
    ({"objective": ["valid_loss", "grad_equivalents"], "confirm": {"top_k": 2}},
     "confirm: the confirmation stage picks by one objective's mean"),
])  # fmt: skip
def test_confirm_settings_are_checked_in_one_line(tmp_path, fields, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "task": "logreg_breast_cancer", **fields}))
    with pytest.raises(SettingsError) as caught:
        load_study_config(path)
    assert message in str(caught.value) and "\n" not in str(caught.value).strip()


def test_confirm_false_and_top_k_0_turn_the_stage_off_and_several_objectives_skip_it():
    assert _config(3, 3).confirms
    assert not StudyConfig(name="s", task="logreg_breast_cancer", confirm=False).confirms
    assert not StudyConfig(name="s", task="logreg_breast_cancer", confirm={"top_k": 0}).confirms
    assert not StudyConfig(name="s", task="logreg_breast_cancer", objective=["valid_loss", "wall_seconds"]).confirms
