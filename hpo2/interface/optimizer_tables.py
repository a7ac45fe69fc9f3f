"""What ``hpo2 optimizers`` prints: the registered optimizers, and every setting of
one, read from the same settings models that validate, search and export them.

A setting's row shows its default, its search range (from its ``FloatRange``,
``IntRange`` or ``Choice``; "fixed" when it is not searched), the values
it accepts (type and pydantic constraints) and its description.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from hpo2.errors import SettingsError, did_you_mean
from hpo2.interface.tables import Column, FittedTable
from hpo2.optim.registry import ATTACHMENT_SUMMARIES, ATTACHMENTS, REGISTRY
from hpo2.optim.settings import Choice, IntRange, OptimizerSettings, SearchDimension

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def format_value(value: Any) -> str:
    """A default or bound as a user writes it in YAML (``1e-3``, ``full``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_range(dimension: SearchDimension | None) -> str:
    """``low .. high`` (``log``, ``int``), the choices, and the condition it is searched under."""
    if dimension is None:
        return "fixed"
    if isinstance(dimension, Choice):
        text = "{" + ", ".join(format_value(c) for c in dimension.choices) + "}"
    else:
        kinds = [k for k, on in (("int", isinstance(dimension, IntRange)), ("log", dimension.log)) if on]
        text = f"{format_value(dimension.low)} .. {format_value(dimension.high)}"
        text += f" ({', '.join(kinds)})" if kinds else ""
    if dimension.when is not None:
        setting, values = dimension.when
        text += f" if {setting} in {{{', '.join(format_value(v) for v in values)}}}"
    return text


def _constraints(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            parts.append(_constraints(item.metadata))
            continue
        for attribute, symbol in _BOUNDS:
            bound = getattr(item, attribute, None)
            if bound is not None:
                parts.append(f"{symbol} {format_value(bound)}")
    return ", ".join(p for p in parts if p)


def format_allowed(annotation: Any, metadata: list[Any] | None = None) -> str:
    """The values a setting accepts: its type with its bounds, or its literal values."""
    origin = get_origin(annotation)
    if origin is Literal:
        text = " | ".join(format_value(v) for v in get_args(annotation))
    elif origin is Union or origin is types.UnionType:
        text = " | ".join(format_allowed(arg) for arg in get_args(annotation))
    elif origin is Annotated:
        base, *extra = get_args(annotation)
        return format_allowed(base, [*extra, *(metadata or [])])
    elif annotation is type(None):
        text = "null"
    elif annotation is bool:
        text = "true | false"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    bounds = _constraints(metadata or [])
    return f"{text} {bounds}" if bounds else text


def _entries() -> dict[str, tuple[type[OptimizerSettings], str]]:
    """The registered optimizers, then what attaches to any of them (``sam``, ``schedule``)."""
    entries = {name: (spec.settings, spec.summary) for name, spec in REGISTRY.items()}
    entries.update({key: (settings, ATTACHMENT_SUMMARIES[key]) for key, settings in ATTACHMENTS.items()})
    return entries


def optimizers_table() -> FittedTable:
    """One row per optimizer: name, family, summary, reference."""
    table = FittedTable(Column("name", "name"), "family", Column("summary", "note"), Column("reference", "note"),
                        title="hpo2 optimizers (hpo2 optimizers NAME lists one's settings)")
    for name, (settings, summary) in _entries().items():
        table.add_row(name, settings.family, summary, settings.reference)
    return table


def settings_table(name: str) -> FittedTable:
    """Every setting of optimizer ``name``; an unknown name raises :class:`SettingsError`
    with the closest known name."""
    entries = _entries()
    if name not in entries:
        known = ", ".join(entries)
        raise SettingsError(f"{name!r} is not a known optimizer{did_you_mean(name, entries)}; allowed: {known}")
    settings, summary = entries[name]
    space = settings.search_space()
    table = FittedTable(Column("setting", "name"), "default", "search range", "allowed", Column("description", "note"),
                        title=f"{name}: {summary}", caption=f"{settings.family}; reference: {settings.reference}")
    for field, info in settings.model_fields.items():
        table.add_row(
            field,
            format_value(info.default),
            format_range(space.get(field)),
            format_allowed(info.annotation, info.metadata),
            info.description or "",
        )
    return table
