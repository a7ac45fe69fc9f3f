"""Every optimizer setting is described: one line saying what it means (shown by
IDEs and ``hpo2 optimizers NAME``), and every registered optimizer names its
family and its paper."""

from __future__ import annotations

import inspect

import pytest

import hpo2.optim  # noqa: F401  # imports (so defines) every settings model
from hpo2.optim import REGISTRY
from hpo2.optim.settings import OptimizerSettings
from tests.optim.test_constructors import PARAMETRIZE


def _all_settings_models(base: type[OptimizerSettings] = OptimizerSettings) -> list[type[OptimizerSettings]]:
    found: list[type[OptimizerSettings]] = []
    for sub in base.__subclasses__():
        found += [sub, *_all_settings_models(sub)]
    return found


MODELS = [m for m in _all_settings_models() if m.__module__.startswith("hpo2.optim")]


def test_the_models_are_found() -> None:
    assert {spec.settings for spec in REGISTRY.values()} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_setting_has_a_one_line_description(model: type[OptimizerSettings]) -> None:
    for name, field in model.model_fields.items():
        text = field.description
        assert text, f"{model.__name__}.{name} has no description (a docstring line under the field)"
        assert "\n" not in text and len(text) <= 110, f"{model.__name__}.{name}: keep the description to one line"
        assert text.endswith("."), f"{model.__name__}.{name}: end the description with a full stop"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_optimizer_names_its_family_and_reference(name: str) -> None:
    settings = REGISTRY[name].settings
    assert settings.family, f"{settings.__name__}.family is empty"
    assert settings.reference, f"{settings.__name__}.reference is empty"


@PARAMETRIZE
def test_every_optimizer_docstring_has_args_a_runnable_example_and_the_reference(
    name: str, cls: type, settings: type[OptimizerSettings]
) -> None:
    doc = inspect.getdoc(cls) or ""
    args = doc[doc.index("Args:") : doc.index("Example:")]
    for field, info in settings.model_fields.items():
        assert f"\n    {field} (" in args and str(info.description) in args, f"{cls.__name__} Args lacks {field}"
    assert "\n    >>> " in doc[doc.index("Example:") :], f"{cls.__name__} has no runnable example"
    assert doc.rstrip().endswith(f"References:\n    {settings.reference}")
