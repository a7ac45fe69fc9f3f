"""Learning-rate schedules (:mod:`hpo2.optim.schedules`): the rate at known steps for each decay, what they
scale, what they refuse, the study file's ``schedule`` entry, the training loop's progress, and the exported
config that rebuilds the loop's rate sequence in a loop of one's own."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from pydantic import ValidationError
from torch import nn

from hpo2.errors import SettingsError
from hpo2.optim import ScheduleSettings, build_schedule, from_config, reuse_notes, schedule_from_config
from hpo2.optim.settings import FloatRange
from hpo2.study.config import StudyConfig
from hpo2.study.results import export_config
from hpo2.study.space import SearchSpace
from hpo2.tasks import build_task
from hpo2.train import Budget, TrainConfig, run_training
from hpo2.train.config import validate

BASE_LR = 0.2


def rates(settings: ScheduleSettings, total_steps: int) -> list[float]:
    """The rate each of ``total_steps`` steps takes, read as a loop of one's own reads it."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    schedule = build_schedule(opt, settings, total_steps)
    taken = []
    for _ in range(total_steps):
        taken.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return taken


# 100 steps, warmup 0.1 (steps 1-10), final fraction 0.1. Step k takes m(k/100) x 0.2; after warmup
# q = (k/100 - 0.1)/0.9, so step 55 is q = 1/2 and step 91 is q = 0.9.
# cosine: 0.1 + 0.9 (1 + cos(pi q))/2 ; linear: 1 - 0.9 q ; constant: 1.
EXPECTED: dict[str, dict[int, float]] = {
    #          first step        mid-warmup  warmup end  q = 1/2        q = 0.9 (step 91)                    last
    "cosine": {1: 0.2 * 0.1, 5: 0.2 * 0.5, 10: 0.2, 55: 0.2 * 0.55, 91: 0.2 * (0.1 + 0.45 * (1 + math.cos(0.9 * math.pi))), 100: 0.02},  # noqa: E501
    "linear": {1: 0.2 * 0.1, 5: 0.2 * 0.5, 10: 0.2, 55: 0.2 * 0.55, 91: 0.2 * (1 - 0.9 * 0.9), 100: 0.02},
    "constant": {1: 0.2 * 0.1, 5: 0.2 * 0.5, 10: 0.2, 55: 0.2, 91: 0.2, 100: 0.2},
}


@pytest.mark.parametrize("decay", list(EXPECTED))
def test_rates_at_known_steps(decay: str) -> None:
    taken = rates(ScheduleSettings(warmup=0.1, decay=decay, final_fraction=0.1), 100)  # type: ignore[arg-type]  # a Literal
    for step, expected in EXPECTED[decay].items():
        assert taken[step - 1] == pytest.approx(expected, rel=1e-12), (decay, step)
    if decay == "cosine":  # cosine keeps more of the rate than linear early in the decay (step 33: q = 0.26)
        assert taken[32] > rates(ScheduleSettings(warmup=0.1, decay="linear", final_fraction=0.1), 100)[32]


def test_no_warmup_starts_the_decay_at_the_first_step() -> None:
    taken = rates(ScheduleSettings(warmup=0.0, decay="linear", final_fraction=0.0), 4)
    assert taken == pytest.approx([0.2 * 0.75, 0.2 * 0.5, 0.2 * 0.25, 0.0])


# the test steps the schedule alone, to read the rates it sets
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_every_learning_rate_of_a_group_is_scaled() -> None:
    """K-FAC's adam_lr (Adam for the layers it cannot factor) follows the schedule with its lr."""
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    config = {"name": "kfac", "settings": {"lr": 0.1, "adam_lr": 0.01,
                                           "schedule": {"warmup": 0.5, "decay": "constant"}}}  # fmt: skip
    opt = from_config(config, model.parameters())
    schedule = schedule_from_config(config, opt, total_steps=4)
    assert schedule is not None
    group = opt.param_groups[0]
    assert (group["lr"], group["adam_lr"]) == pytest.approx((0.05, 0.005))
    schedule.step()
    assert (group["lr"], group["adam_lr"]) == pytest.approx((0.1, 0.01))
    again = schedule_from_config(config, opt, total_steps=4)  # a second schedule keeps the first's base rates
    assert again is not None and group["initial_lr"] == 0.1
    again.step()
    assert (group["lr"], group["adam_lr"], group["initial_lr"]) == pytest.approx((0.1, 0.01, 0.1))


def test_muon_schedules_both_of_its_rates() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    config = {"name": "muon", "settings": {"lr": 0.02, "adam_lr": 0.001, "schedule": {"warmup": 0.5}}}
    opt = from_config(config, model.parameters())
    schedule_from_config(config, opt, total_steps=4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.0005])


class NoRate(torch.optim.Optimizer):
    """An optimizer whose groups hold no ``lr`` (its step size is its own business)."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {"momentum": 0.9})

    def step(self, closure: Any = None) -> None:
        return None


def test_an_optimizer_without_lr_is_refused_clearly() -> None:
    with pytest.raises(SettingsError, match=r"schedule: NoRate has no 'lr' in its parameter group\(s\) \[0\]"):
        build_schedule(NoRate([nn.Parameter(torch.zeros(1))]), ScheduleSettings(), 10)


def test_config_errors_name_the_field_and_what_is_allowed() -> None:
    params = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(SettingsError, match=r"optimizer.settings.schedule.decay = 'step'"):
        from_config({"name": "sgd", "settings": {"schedule": {"decay": "step"}}}, params)
    with pytest.raises(SettingsError, match=r"optimizer.settings.schedule.warmup = 1.0"):
        from_config({"name": "sgd", "settings": {"schedule": {"warmup": 1.0}}}, params)
    with pytest.raises(SettingsError, match=r"optimizer.settings.schedule = 'cosine': give a mapping"):
        from_config({"name": "sgd", "settings": {"schedule": "cosine"}}, params)
    config = {"name": "sgd", "settings": {"schedule": True}}
    opt = from_config(config, params)
    with pytest.raises(SettingsError, match="total_steps = 0"):
        schedule_from_config(config, opt, total_steps=0)
    with pytest.raises(SettingsError, match="give total_steps"):
        schedule_from_config(config, opt)
    assert schedule_from_config({"name": "sgd"}, opt, total_steps=10) is None


def test_a_study_file_schedule_entry_adds_searched_params_per_optimizer() -> None:
    config = StudyConfig(name="s", task="digits_mlp", optimizers=[
        {"name": "sgd", "schedule": True},
        {"name": "adam", "schedule": {"warmup": [0.0, 0.1], "decay": "linear"}},
        "newton_cg"])  # fmt: skip
    space = SearchSpace(config)
    sgd = space.optimizers["sgd"]
    assert sgd.distributions["sgd.schedule.warmup"] == FloatDistribution(0.0, 0.2)
    assert sgd.distributions["sgd.schedule.decay"] == CategoricalDistribution(["cosine", "linear", "constant"])
    # the condition on the decay names the flat param, as the search params are named
    condition = ("schedule.decay", ("cosine", "linear"))
    assert sgd.dimensions["schedule.final_fraction"] == FloatRange(0.0, 0.3, when=condition)
    assert space.optimizers["adam"].dimensions["schedule.warmup"] == FloatRange(0.0, 0.1)
    assert space.optimizers["adam"].fixed == {"schedule.decay": "linear"}
    assert not any(k.startswith("schedule.") for k in space.optimizers["newton_cg"].dimensions)
    defaults = sgd.default_params()  # enqueued first: AlgoPerf's warmup 0.05, cosine decay to 0
    assert (defaults["sgd.schedule.warmup"], defaults["sgd.schedule.decay"]) == (0.05, "cosine")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    decays = set()
    for _ in range(30):
        name, settings = space.suggest(study.ask())
        if name == "sgd":
            schedule = settings["schedule"]
            decays.add(schedule["decay"])
            assert ("final_fraction" in schedule) == (schedule["decay"] != "constant")
            from_config({"name": name, "settings": settings}, [nn.Parameter(torch.zeros(1))])
        elif name == "adam":
            assert settings["schedule"]["decay"] == "linear" and 0.0 <= settings["schedule"]["warmup"] <= 0.1
        else:
            assert "schedule" not in settings
    assert decays == {"cosine", "linear", "constant"}
    for bad, message in [({"warmup": [0.3, 0.1]}, r"schedule.warmup = \[0.3, 0.1\]: give \[low, high\]"),
                         ({"decay": ["step"]}, "schedule.decay .* non-empty subset"),
                         ({"shape": "cosine"}, "schedule.shape: unknown schedule setting"),
                         ({"warmup": 2.0}, "schedule.warmup")]:  # fmt: skip
        with pytest.raises(ValidationError, match=message):
            StudyConfig(name="s", task="digits_mlp", optimizers=[{"name": "sgd", "schedule": bad}])


def exported(optimizer: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """``hpo2 study best --export`` of a study whose one optimizer has all settings fixed (one trial, told)."""
    config = StudyConfig(name="s", task="digits_mlp", budget=budget, optimizers=[optimizer])
    space = SearchSpace(config)
    study = optuna.create_study()
    trial = study.ask()
    space.suggest(trial)
    study.tell(trial, 0.9)
    return export_config(config, study.trials[0])


SCHEDULED_SGD = {"name": "sgd", "fixed": {"lr": 0.05, "momentum": 0.5},
                 "schedule": {"warmup": 0.2, "decay": "cosine", "final_fraction": 0.1}}  # fmt: skip


@pytest.mark.parametrize("budget", [{"steps": 12}, {"epochs": 1}])
def test_the_export_rebuilds_the_training_loops_rate_sequence(budget: dict[str, Any]) -> None:
    best = exported(SCHEDULED_SGD, budget)
    assert best["optimizer"]["settings"]["schedule"] == {"warmup": 0.2, "decay": "cosine", "final_fraction": 0.1}
    assert "cosine decay to 0.1 x lr" in best["reuse"]["schedule"]
    validate(TrainConfig, best, "best.yaml")  # `hpo2 train --config` reads it back
    task = build_task("digits_mlp")  # 1200 training samples, batch 64: 18 steps per epoch
    result = run_training(task, best["optimizer"], Budget(**budget), device="cpu")
    loop_rates = [d["lr"] for d in result.step_diagnostics]
    total = 12 if "steps" in budget else 18
    assert len(loop_rates) == total
    model = build_task("digits_mlp").model
    optimizer = from_config(best, model.parameters())
    schedule = schedule_from_config(best, optimizer, total_steps=total)
    assert schedule is not None
    own_rates = []
    for _ in range(total):
        own_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert own_rates == pytest.approx(loop_rates, rel=1e-12)
    assert loop_rates[0] == pytest.approx(0.05 / (0.2 * total)) and loop_rates[-1] == pytest.approx(0.005)


def test_a_grad_equivalent_budget_paces_the_schedule_like_the_step_count() -> None:
    """SGD costs one gradient per step: 12 gradient-equivalents are 12 steps, and the pace-predicted
    progress (exact after the first step, whose cost is one gradient) gives the same rates."""
    optimizer = {"name": "sgd", "settings": {"lr": 0.05, "schedule": {"warmup": 0.25, "decay": "linear"}}}
    by_steps = run_training(build_task("digits_mlp"), optimizer, Budget(steps=12), device="cpu")
    by_cost = run_training(build_task("digits_mlp"), optimizer, Budget(grad_equivalents=12), device="cpu")
    assert [d["lr"] for d in by_cost.step_diagnostics] == pytest.approx([d["lr"] for d in by_steps.step_diagnostics])


def test_reuse_notes_name_the_batch_regime_curvature_chunk_and_schedule() -> None:
    hf = reuse_notes({"name": "hessian_free", "settings": {"curvature_fraction": 0.25}})
    assert "whole training set" in hf["batch"] and "batch_size: full" in hf["batch"]
    assert "chunk of 0.25" in hf["curvature"] and "at least 4 samples" in hf["curvature"]
    assert hf["schedule"].startswith("none")
    assert "BatchClosure" in hf["step"] and "does not call backward()" in hf["step"]
    adam = reuse_notes({"name": "adam", "settings": {"schedule": True, "sam": True}})
    assert "task's own batch" in adam["batch"] and "curvature" not in adam
    assert "schedule_from_config" in adam["schedule"] and "sam" in adam
    assert "snapshot" in reuse_notes("svrg")["loop"]
    assert "512 samples" in reuse_notes({"name": "newton_cg", "settings": {"batch_size": 512}})["batch"]


def test_the_loop_logs_no_lr_without_a_schedule() -> None:
    result = run_training(build_task("digits_mlp"), {"name": "sgd"}, Budget(steps=2), device="cpu")
    assert all("lr" not in d for d in result.step_diagnostics)
