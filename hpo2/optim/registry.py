"""Optimizer registry: name -> class, settings model, search space; and
:func:`from_config`, which builds an optimizer from a dict, a YAML/JSON file or
an exported best config.

Config format (the ``optimizer`` section of ``hpo2 train --config`` files and of
``hpo2 study best --export``)::

    optimizer:
      name: hessian_free
      settings: {damping: 0.5, cg_max_iter: 100}

A bare optimizer section (``{"name": ..., "settings": ...}``) or just a name works
too; missing settings take the paper defaults.  Two settings attach to any
optimizer (:data:`ATTACHMENTS`, each a mapping, or ``true`` for its defaults):
``settings.sam: {rho, adaptive}`` wraps it in sharpness-aware minimization
(:mod:`hpo2.optim.sam`), and ``settings.schedule: {warmup, decay, final_fraction}``
gives it a learning-rate schedule (:mod:`hpo2.optim.schedules`), which
:func:`schedule_from_config` builds beside :func:`from_config`.

What ``from_config`` returns takes ``optimizer.step(BatchClosure(model, loss_fn, x, y))``
for every registered optimizer: the ``torch.optim`` baselines accept hpo2's closure
(it returns the loss) as well as torch's (it calls ``backward()``), see
:mod:`hpo2.optim.baselines`.  :func:`reuse_notes` says in words what a loop of your
own must honour for a config (batch regime, curvature chunk, schedule).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn
from torch.optim import Optimizer

from hpo2.common.yaml_loader import YamlLimitError, check_file_size, load_yaml, yaml_error_message
from hpo2.errors import SettingsError, check_known, did_you_mean
from hpo2.optim.adahessian import AdaHessian
from hpo2.optim.base import CurvatureOptimizer, LoopOptimizer
from hpo2.optim.baselines import AdamSettings, AdamWSettings, SGDSettings, build_adam, build_sgd
from hpo2.optim.hessian_free import HessianFree
from hpo2.optim.kfac import KFAC
from hpo2.optim.lbfgs import LBFGS
from hpo2.optim.muon import MuonSettings, MuonWithAdamW
from hpo2.optim.newton_cg import NewtonCG
from hpo2.optim.saddle_free import SaddleFreeNewton
from hpo2.optim.sam import SAM, SAM_KEY, SAMSettings
from hpo2.optim.schedules import SCHEDULE_KEY, Progress, ScheduleSettings, WarmupDecay, build_schedule
from hpo2.optim.settings import OptimizerSettings, SearchDimension
from hpo2.optim.shampoo import Shampoo
from hpo2.optim.soap import SOAP
from hpo2.optim.sophia import Sophia
from hpo2.optim.svrg import SVRG


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer: how to build it and what its settings are."""

    name: str
    settings: type[OptimizerSettings]
    build: Callable[[Iterable[Any], OptimizerSettings], LoopOptimizer]
    second_order: bool
    summary: str
    loop_note: str = ""
    """What a loop of your own must do beyond ``step(BatchClosure(...))`` (SVRG's snapshots)."""
    takes_model: bool = False
    """Built from the model itself when :func:`from_config` is given one (Muon tells embeddings and the
    output layer from hidden matrices); every other optimizer gets ``model.parameters()``."""

    def search_space(self) -> dict[str, SearchDimension]:
        return self.settings.search_space()

    def paper_defaults(self) -> dict[str, Any]:
        return self.settings.paper_defaults()


def _curvature(
    cls: type[CurvatureOptimizer] | type[MuonWithAdamW],
) -> Callable[[Iterable[Any], OptimizerSettings], LoopOptimizer]:
    """Build ``cls`` from a settings model: its keyword arguments are the model's fields."""
    return lambda params, settings: cls(params, **settings.model_dump())


REGISTRY: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec(
            "newton_cg", NewtonCG.Settings, _curvature(NewtonCG), True, "truncated Newton-CG (Hessian or GGN)"
        ),
        OptimizerSpec(
            "hessian_free",
            HessianFree.Settings,
            _curvature(HessianFree),
            True,
            "Martens' Hessian-free (GGN, LM damping)",
        ),
        OptimizerSpec("lbfgs", LBFGS.Settings, _curvature(LBFGS), True, "limited-memory BFGS"),
        OptimizerSpec(
            "adahessian", AdaHessian.Settings, _curvature(AdaHessian), True, "AdaHessian (Hutchinson diagonal)"
        ),
        OptimizerSpec("sophia", Sophia.Settings, _curvature(Sophia), True, "Sophia (clipped diagonal Newton)"),
        OptimizerSpec("kfac", KFAC.Settings, _curvature(KFAC), True, "K-FAC (Kronecker factors, KL-clipped)"),
        OptimizerSpec(
            "saddle_free_newton",
            SaddleFreeNewton.Settings,
            _curvature(SaddleFreeNewton),
            True,
            "low-rank saddle-free Newton (Lanczos |H|)",
        ),
        OptimizerSpec(
            "shampoo", Shampoo.Settings, _curvature(Shampoo), True, "Shampoo (Kronecker-factored, Adam grafting)"
        ),
        OptimizerSpec("soap", SOAP.Settings, _curvature(SOAP), True, "SOAP (Adam in Shampoo's eigenbasis)"),
        # sgd, adam, adamw: each builder takes its own Settings subclass (the ignores below)
        OptimizerSpec("sgd", SGDSettings, build_sgd, False, "SGD with momentum (torch.optim)"),  # type: ignore[arg-type]
        OptimizerSpec("adam", AdamSettings, build_adam, False, "Adam (torch.optim)"),  # type: ignore[arg-type]
        OptimizerSpec("adamw", AdamWSettings, build_adam, False, "AdamW (torch.optim)"),  # type: ignore[arg-type]
        OptimizerSpec(
            "muon", MuonSettings, _curvature(MuonWithAdamW), False,
            "Muon on hidden weight matrices + AdamW on embeddings, output layer, biases", takes_model=True,
        ),
        OptimizerSpec(
            "svrg", SVRG.Settings, _curvature(SVRG), False, "SVRG (variance-reduced SGD, Johnson & Zhang 2013)",
            "call optimizer.snapshot(BatchClosure(model, loss_fn, train_x, train_y), batch_size) at the start of "
            "every epoch, before its steps (hpo2's training loop does)",
        ),
    ]
}


def get_spec(name: str, where: str = "optimizer.name") -> OptimizerSpec:
    """The registered optimizer ``name``, or an error listing the known names."""
    if name not in REGISTRY:
        raise SettingsError(
            f"{where}: {name!r} is not a known optimizer{did_you_mean(name, REGISTRY)}; allowed: {', '.join(REGISTRY)}"
        )
    return REGISTRY[name]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (safe loader, YAML 1.2 numbers: no code runs, ``1e-4`` is a
    float) or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"config file {str(path)!r} does not exist")
    try:
        if path.suffix == ".json":
            check_file_size(path)
            data = json.loads(path.read_text())
        else:
            data = load_yaml(path)
    except RecursionError:  # JSON nested past Python's recursion limit (the YAML loader stops at its own)
        raise SettingsError(f"config file refused: {path}: nested too deeply") from None
    except YamlLimitError as exc:
        raise SettingsError(f"config file refused: {yaml_error_message(path, exc)}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file is not valid YAML: {yaml_error_message(path, exc)}") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(
            f"config file is not valid JSON: {path}, line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


#: settings that attach to any optimizer, each under its own key of ``settings``
ATTACHMENTS: dict[str, type[OptimizerSettings]] = {SAM_KEY: SAMSettings, SCHEDULE_KEY: ScheduleSettings}
#: one line each for ``hpo2 optimizers``
ATTACHMENT_SUMMARIES = {
    SAM_KEY: "sharpness-aware minimization around any optimizer (settings.sam)",
    SCHEDULE_KEY: "learning-rate warmup and decay for any optimizer (settings.schedule)",
}


def parse_attachment(key: str, value: Any, where: str) -> OptimizerSettings | None:
    """The ``settings.<key>`` entry of an optimizer config (:data:`ATTACHMENTS`): a
    mapping of its settings, or ``true`` for its defaults; ``None``/``false``: none."""
    if value is None or value is False:
        return None
    settings = ATTACHMENTS[key]
    if value is True:
        return settings()
    if not isinstance(value, Mapping):
        raise SettingsError(
            f"{where} = {value!r}: give a mapping {{{', '.join(settings.model_fields)}}} or true/false"
        )
    return settings.parse(dict(value), where=where)


def nest_attachments(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"lr": .1, "sam.rho": .05, "schedule.warmup": .1}`` -> ``{"lr": .1, "sam": {"rho": .05},
    "schedule": {"warmup": .1}}`` (search params are flat, settings nest the attached parts)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if rest and head in ATTACHMENTS:
            out.setdefault(head, {})[rest] = value
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class ParsedOptimizerConfig:
    """A validated optimizer config: the registered optimizer, its settings, and the attached parts."""

    spec: OptimizerSpec
    settings: OptimizerSettings
    sam: SAMSettings | None
    schedule: ScheduleSettings | None


def parse_optimizer_config(config: Mapping[str, Any] | str | Path) -> tuple[OptimizerSpec, OptimizerSettings]:
    """Validate an optimizer config (see the module docstring) into its spec and settings."""
    parsed = parse_full_optimizer_config(config)
    return parsed.spec, parsed.settings


def parse_full_optimizer_config(config: Mapping[str, Any] | str | Path) -> ParsedOptimizerConfig:
    """:func:`parse_optimizer_config` plus the attached ``settings.sam`` and ``settings.schedule``."""
    if isinstance(config, Path) or (
        isinstance(config, str) and (config.endswith((".yaml", ".yml", ".json")) or "/" in config)
    ):
        config = load_config_file(config)
    where = "optimizer"
    if isinstance(config, str):
        section: Any = {"name": config}
    elif isinstance(config, Mapping) and "optimizer" in config:
        section = config["optimizer"]
        section = {"name": section} if isinstance(section, str) else section
    else:
        section = config
    if not isinstance(section, Mapping):
        raise SettingsError(f"{where} must be a mapping with 'name' and 'settings', got {type(section).__name__}")
    check_known(section, ("name", "settings"), where)
    if "name" not in section:
        raise SettingsError(f"{where}.name is missing; allowed: {', '.join(REGISTRY)}")
    spec = get_spec(str(section["name"]), f"{where}.name")
    settings = section.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise SettingsError(f"{where}.settings must be a mapping of setting: value, got {type(settings).__name__}")
    settings = dict(settings)
    attached = {key: parse_attachment(key, settings.pop(key, None), f"{where}.settings.{key}") for key in ATTACHMENTS}
    return ParsedOptimizerConfig(
        spec,
        spec.settings.parse(settings, where=f"{where}.settings"),
        attached[SAM_KEY],  # type: ignore[arg-type]  # parsed by SAMSettings
        attached[SCHEDULE_KEY],  # type: ignore[arg-type]  # parsed by ScheduleSettings
    )


def from_config(config: Mapping[str, Any] | str | Path, params: Iterable[Any] | nn.Module) -> LoopOptimizer:
    """Build the optimizer a config describes over ``params``: the parameters, or the
    model itself (what hpo2's training loop passes), which lets an optimizer that
    reads the model's structure (``muon``: embeddings and the output layer go to
    AdamW) see it; every other optimizer then gets ``model.parameters()``.

    ``config`` is a dict (a whole ``hpo2 train`` config, its ``optimizer``
    section, or an exported best config), a path to a YAML/JSON file holding one,
    or a registry name.  Unknown names or settings raise
    :class:`~hpo2.optim.settings.SettingsError` listing what is allowed.  Its
    ``step(BatchClosure(model, loss_fn, x, y))`` trains, whichever optimizer it is;
    a ``settings.schedule`` is built by :func:`schedule_from_config`.
    """
    parsed = parse_full_optimizer_config(config)
    if isinstance(params, nn.Module) and not parsed.spec.takes_model:
        params = params.parameters()
    optimizer = parsed.spec.build(params, parsed.settings)  # type: ignore[arg-type]  # a model only where spec.takes_model
    return optimizer if parsed.sam is None else SAM(optimizer, **parsed.sam.model_dump())


def schedule_from_config(
    config: Mapping[str, Any] | str | Path,
    optimizer: Optimizer,
    total_steps: int | None = None,
    *,
    progress: Progress | None = None,
) -> WarmupDecay | None:
    """The learning-rate schedule of a config's ``settings.schedule`` over ``optimizer``
    (the one :func:`from_config` built from the same config), or None when it has none.

    Give ``total_steps``, the number of ``optimizer.step(...)`` calls your loop will
    make (e.g. ``epochs * len(loader)``), and call ``schedule.step()`` after each of
    them; or a ``progress`` function (:data:`~hpo2.optim.schedules.Progress`), as
    hpo2's training loop does for time budgets.  Step ``k`` of ``total_steps`` then
    runs at ``lr * m(k / total_steps)`` (:mod:`hpo2.optim.schedules`).
    """
    schedule = parse_full_optimizer_config(config).schedule
    if (total_steps is None) == (progress is None):
        raise SettingsError("schedule_from_config: give total_steps (the optimizer steps you will take) or progress")
    if schedule is None:
        return None
    return build_schedule(optimizer, schedule, progress if progress is not None else total_steps)  # type: ignore[arg-type]  # one of them is set


def reuse_notes(config: Mapping[str, Any] | str | Path) -> dict[str, str]:
    """What a training loop of your own must honour to train as a config's trials did,
    in words (``hpo2 study best --export`` writes them under ``reuse``): the step call,
    the batch regime, the curvature chunk, the schedule, SAM's second evaluation and
    anything the optimizer itself needs (SVRG's snapshots)."""
    parsed = parse_full_optimizer_config(config)
    fields = parsed.settings.model_dump()
    batch = fields.get("batch_size")
    notes = {
        "step": "optimizer = hpo2.optim.from_config(this file, model.parameters()); each step call "
        "optimizer.step(hpo2.optim.BatchClosure(model, loss_fn, x, y)) -- the closure returns the loss and "
        "does not call backward()",
        "batch": "the task's own batch size, as the study trained"
        if batch is None
        else "the whole training set (batch_size: full): each step's BatchClosure holds all training samples "
        "(or a batch as large as fits; Martens 2010), not a minibatch"
        if batch == "full"
        else f"{batch} samples per step (batch_size: {batch}), not the task's batch",
    }
    if "curvature_fraction" in fields:
        fraction = fields["curvature_fraction"]
        notes["curvature"] = (
            f"curvature products on a chunk of {fraction:.3g} of each step's batch, cycling over the steps "
            "(curvature_fraction): the optimizer takes the chunk from the BatchClosure itself, so the batch must "
            f"hold at least {max(1, round(1 / fraction))} samples for a proper chunk"
        )
    notes["schedule"] = (
        "none: the learning rate stays constant"
        if parsed.schedule is None
        else f"{parsed.schedule.describe()}; schedule = hpo2.optim.schedule_from_config(this file, optimizer, "
        "total_steps) with total_steps = the optimizer steps your loop takes, and schedule.step() after every "
        "optimizer.step(...) (the study spread it over each trial's budget)"
    )
    if parsed.sam is not None:
        notes["sam"] = "SAM evaluates the closure twice per step (at w and at w + eps): keep it re-evaluable"
    if parsed.spec.loop_note:
        notes["loop"] = parsed.spec.loop_note
    return notes
