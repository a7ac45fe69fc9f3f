"""Optimizer registry: name -> class, settings model, search space; and
:func:`from_config`, which builds an optimizer from a dict, a YAML/JSON file or
an exported best config.

Config format (the ``optimizer`` section of ``hpo2 train --config`` files and of
``hpo2 study best --export``)::

    optimizer:
      name: hessian_free
      settings: {damping: 0.5, cg_max_iter: 100}

A bare optimizer section (``{"name": ..., "settings": ...}``) or just a name works
too; missing settings take the paper defaults.  ``settings.sam: {rho, adaptive}``
wraps any optimizer in sharpness-aware minimization (:mod:`hpo2.optim.sam`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch.optim import Optimizer

from hpo2.errors import SettingsError, check_known, did_you_mean
from hpo2.optim.adahessian import AdaHessian
from hpo2.optim.base import CurvatureOptimizer
from hpo2.optim.baselines import AdamSettings, AdamWSettings, SGDSettings, build_adam, build_sgd
from hpo2.optim.hessian_free import HessianFree
from hpo2.optim.kfac import KFAC
from hpo2.optim.lbfgs import LBFGS
from hpo2.optim.muon import MuonSettings, MuonWithAdamW
from hpo2.optim.newton_cg import NewtonCG
from hpo2.optim.saddle_free import SaddleFreeNewton
from hpo2.optim.sam import SAM, SAM_KEY, SAMSettings, parse_sam
from hpo2.optim.settings import OptimizerSettings, SearchDimension
from hpo2.optim.shampoo import Shampoo
from hpo2.optim.soap import SOAP
from hpo2.optim.sophia import Sophia
from hpo2.optim.svrg import SVRG
from hpo2.yaml_loader import YamlLimitError, check_file_size, load_yaml, yaml_error_message


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer: how to build it and what its settings are."""

    name: str
    settings: type[OptimizerSettings]
    build: Callable[[Iterable[Any], OptimizerSettings], Optimizer]
    second_order: bool
    summary: str

    def search_space(self) -> dict[str, SearchDimension]:
        return self.settings.search_space()

    def paper_defaults(self) -> dict[str, Any]:
        return self.settings.paper_defaults()


def _curvature(
    cls: type[CurvatureOptimizer] | type[MuonWithAdamW],
) -> Callable[[Iterable[Any], OptimizerSettings], Optimizer]:
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
            "muon", MuonSettings, _curvature(MuonWithAdamW), False, "Muon on 2-d weights + AdamW (torch.optim)"
        ),
        OptimizerSpec(
            "svrg", SVRG.Settings, _curvature(SVRG), False, "SVRG (variance-reduced SGD, Johnson & Zhang 2013)"
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


def parse_optimizer_config(config: Mapping[str, Any] | str | Path) -> tuple[OptimizerSpec, OptimizerSettings]:
    """Validate an optimizer config (see the module docstring) into its spec and settings."""
    spec, settings, _ = parse_optimizer_config_with_sam(config)
    return spec, settings


def parse_optimizer_config_with_sam(
    config: Mapping[str, Any] | str | Path,
) -> tuple[OptimizerSpec, OptimizerSettings, SAMSettings | None]:
    """:func:`parse_optimizer_config` plus the optional ``settings.sam`` part."""
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
    sam = parse_sam(settings.pop(SAM_KEY, None), where=f"{where}.settings.{SAM_KEY}")
    return spec, spec.settings.parse(settings, where=f"{where}.settings"), sam


def from_config(config: Mapping[str, Any] | str | Path, params: Iterable[Any]) -> Optimizer:
    """Build the optimizer a config describes over ``params``.

    ``config`` is a dict (a whole ``hpo2 train`` config, its ``optimizer``
    section, or an exported best config), a path to a YAML/JSON file holding one,
    or a registry name.  Unknown names or settings raise
    :class:`~hpo2.optim.settings.SettingsError` listing what is allowed.
    """
    spec, settings, sam = parse_optimizer_config_with_sam(config)
    optimizer = spec.build(params, settings)
    return optimizer if sam is None else SAM(optimizer, **sam.model_dump())
