"""Every hpo2 optimizer's constructor mirrors its settings model.

The keyword arguments an IDE shows (``NewtonCG(params, damping=...)``) and the
settings model that validates them, searches them and exports them are written
twice; these tests keep the two the same: names in order, types, defaults, and
every keyword reaching the settings.  They run over every registered optimizer
built by hpo2 (the torch baselines keep torch's own signatures) and the SAM wrapper.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.optim import Optimizer

import hpo2.optim
from hpo2.errors import SettingsError
from hpo2.optim import REGISTRY, SAM, MuonWithAdamW, NewtonCG, SAMSettings
from hpo2.optim.settings import Choice, FloatRange, IntRange, OptimizerSettings

#: keyword arguments that switch runtime behaviour and are not settings (not searched, not exported)
RUNTIME_KEYWORDS = {"raise_on_nonfinite"}


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(3))]


def _classes() -> Iterator[tuple[str, type[Optimizer], type[OptimizerSettings]]]:
    """(name, class, settings model) of each registered optimizer that hpo2 implements
    (found by its ``Settings`` among :mod:`hpo2.optim`'s exports), and SAM."""
    by_settings = {
        obj.Settings: obj
        for obj in vars(hpo2.optim).values()
        if isinstance(obj, type) and issubclass(obj, Optimizer) and "Settings" in vars(obj)
    }
    for name, spec in REGISTRY.items():
        if spec.settings in by_settings:
            yield name, by_settings[spec.settings], spec.settings
    yield "sam", SAM, SAMSettings


CLASSES = list(_classes())


def _build(cls: type[Optimizer], **keywords: Any) -> Optimizer:
    if cls is SAM:
        return SAM(torch.optim.SGD(_params(), lr=0.1), **keywords)
    return cls(_params(), **keywords)  # type: ignore[call-arg]  # every hpo2 optimizer takes params first


def _plain(annotation: Any) -> Any:
    """``annotation`` without ``Annotated`` metadata, at any depth (as ``get_type_hints`` gives)."""
    holder = type("Holder", (), {"__annotations__": {"x": annotation}})
    return typing.get_type_hints(holder)["x"]


def _keyword_parameters(cls: type[Optimizer]) -> list[inspect.Parameter]:
    signature = inspect.signature(cls.__init__)
    return [p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_every_registered_hpo2_optimizer_is_checked() -> None:
    checked = {name for name, _, _ in CLASSES}
    torch_built = {name for name in REGISTRY if name not in checked}
    assert torch_built == {"sgd", "adam", "adamw"}, "only the torch.optim baselines keep torch's own signatures"


PARAMETRIZE = pytest.mark.parametrize(("name", "cls", "settings"), CLASSES, ids=[c[0] for c in CLASSES])


@PARAMETRIZE
def test_constructor_keywords_are_the_settings_fields(
    name: str, cls: type[Optimizer], settings: type[OptimizerSettings]
) -> None:
    keywords = [p for p in _keyword_parameters(cls) if p.name not in RUNTIME_KEYWORDS]
    assert [p.name for p in keywords] == list(settings.model_fields), f"{cls.__name__} keywords != {settings.__name__}"
    hints = typing.get_type_hints(cls.__init__)
    for parameter in keywords:
        field = settings.model_fields[parameter.name]
        assert parameter.default == field.default, f"{cls.__name__}({parameter.name}=...) default != the settings'"
        assert type(parameter.default) is type(field.default), parameter.name
        assert hints[parameter.name] == _plain(field.annotation), f"{cls.__name__}({parameter.name}: ...) type differs"
    parameters = inspect.signature(cls.__init__).parameters.values()
    others = [p for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in others), "no **overrides or *args"
    assert len(others) == 2, "self and params (or the base optimizer) come before the keyword-only settings"


def _literal_values(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [value for arg in typing.get_args(annotation) for value in _literal_values(arg)]


def _non_default_value(settings: type[OptimizerSettings], name: str) -> Any:
    """A valid value of setting ``name`` other than its default."""
    field = settings.model_fields[name]
    default = field.default
    dimension = settings.search_space().get(name)
    candidates: list[Any] = []
    if isinstance(dimension, Choice):
        candidates += list(dimension.choices)
    elif isinstance(dimension, FloatRange | IntRange):
        candidates += [dimension.high, dimension.low]
    candidates += _literal_values(field.annotation)
    if isinstance(default, bool):
        candidates.append(not default)
    elif isinstance(default, int | float):
        candidates += [default * 0.5, default * 0.9, default + 1, default * 2]
    candidates += [1, 0.5, 3]
    for value in candidates:
        if value == default and type(value) is type(default):
            continue
        try:
            settings(**{name: value})
        except ValueError:
            continue
        return value
    raise AssertionError(f"no valid non-default value found for {settings.__name__}.{name}")


@PARAMETRIZE
def test_every_keyword_reaches_the_settings(name: str, cls: type[Optimizer], settings: type[OptimizerSettings]) -> None:
    for field in settings.model_fields:
        value = _non_default_value(settings, field)
        optimizer = _build(cls, **{field: value})
        assert getattr(optimizer.settings, field) == value, f"{cls.__name__}({field}={value!r}) did not reach settings"


@PARAMETRIZE
def test_an_unknown_keyword_is_refused(name: str, cls: type[Optimizer], settings: type[OptimizerSettings]) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_a_setting'"):
        _build(cls, not_a_setting=1)


@pytest.mark.parametrize("cls", [NewtonCG, MuonWithAdamW])
def test_a_bad_value_names_the_optimizer_the_field_and_the_rule(cls: type[Optimizer]) -> None:
    with pytest.raises(SettingsError, match=rf"{cls.__name__}\.lr = -1\.0: Input should be greater than 0"):
        _build(cls, lr=-1.0)
