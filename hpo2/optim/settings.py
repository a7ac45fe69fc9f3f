"""One settings model per optimizer: paper defaults, validation and search space.

Each optimizer declares its settings as a frozen pydantic model whose field
defaults are the paper's defaults.  A field's search range is declared beside it
with :class:`FloatRange`, :class:`IntRange` or :class:`Choice` in its
``Annotated`` metadata, so the constructor, the study's search space, the MLflow
params and the exported best config all read the same declaration::

    class MySettings(OptimizerSettings):
        lr: Annotated[float, Field(gt=0), FloatRange(1e-4, 1.0, log=True)] = 0.1

Ranges are plain data: the optimizers know nothing of Optuna; the study module
turns them into Optuna distributions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpo2.errors import SettingsError, brief, check_known


@dataclass(frozen=True)
class FloatRange:
    """A continuous range ``[low, high]``, searched on a log scale when ``log``.
    ``when`` names another setting and the values for which this one is active."""

    low: float
    high: float
    log: bool = False
    when: tuple[str, tuple[Any, ...]] | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"range low={self.low} must be < high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")


@dataclass(frozen=True)
class IntRange:
    """An integer range ``[low, high]`` (log scale when ``log``)."""

    low: int
    high: int
    log: bool = False
    when: tuple[str, tuple[Any, ...]] | None = None

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"range low={self.low} must be < high={self.high}")


@dataclass(frozen=True)
class Choice:
    """A categorical choice among ``choices``."""

    choices: tuple[Any, ...]
    when: tuple[str, tuple[Any, ...]] | None = None


SearchDimension = FloatRange | IntRange | Choice


class OptimizerSettings(BaseModel):
    """Base of every optimizer's settings: frozen, unknown fields rejected.

    Each field's description is the docstring under it (pydantic's
    ``use_attribute_docstrings``: one line, shown by IDEs and by ``hpo2 optimizers
    NAME``); ``family`` and ``reference`` name the method's kind and its paper;
    ``renamed`` maps a setting's old name to its new one, so a saved config that
    still uses it is refused with one line that names the new one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    family: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    renamed: ClassVar[dict[str, str]] = {}

    @classmethod
    def search_space(cls) -> dict[str, SearchDimension]:
        """The declared search dimensions, by setting name (fields without one are fixed)."""
        space: dict[str, SearchDimension] = {}
        for name, info in cls.model_fields.items():
            for meta in info.metadata:
                if isinstance(meta, FloatRange | IntRange | Choice):
                    space[name] = meta
        return space

    @classmethod
    def paper_defaults(cls) -> dict[str, Any]:
        """The paper's defaults: the first point a study tries."""
        return cls().model_dump()

    @classmethod
    def refuse_renamed(cls, values: dict[str, Any], where: str) -> None:
        """Raise :class:`SettingsError` on the first setting in ``values`` under an old
        name (:attr:`renamed`): ``where.epsilon = 1e-12: Shampoo's epsilon was renamed eps; write eps: 1e-12``."""
        for old, new in cls.renamed.items():
            if old in values:
                owner = cls.__name__.removesuffix("Settings")
                raise SettingsError(
                    f"{where}.{old} = {brief(values[old])}: {owner}'s {old} was renamed {new}; "
                    f"write {new}: {brief(values[old])}"
                )

    @classmethod
    def parse(cls, values: dict[str, Any] | None, where: str = "settings") -> Self:
        """Validate ``values`` into settings, with a one-paragraph error that names
        each bad field (``where.field``), the value given, and what is allowed."""
        values = dict(values or {})
        cls.refuse_renamed(values, where)
        check_known(values, cls.model_fields, where, "setting(s)")
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                message = err["msg"].removeprefix("Value error, ")
                if not err["loc"]:  # a rule across settings: its message names them
                    problems.append(f"{where}: {message}")
                    continue
                field = ".".join(str(p) for p in err["loc"])
                problems.append(f"{where}.{field} = {err.get('input')!r}: {message}")
            raise SettingsError("; ".join(problems)) from None


BatchSize = Annotated[int, Field(ge=1)] | Literal["full"] | None
#: searched gradient batches: the task's own (None), three fixed sizes, the whole training set
BATCH_CHOICES = Choice((None, 512, 2048, 8192, "full"))


class DataRegimeSettings(OptimizerSettings):
    """Settings of an optimizer that chooses its own data regime.

    ``batch_size`` is the gradient batch, honoured by the training loop
    (:func:`hpo2.train.run_training`): ``None`` keeps the task's batch, ``"full"``
    takes the whole training set, an integer is capped at the training set's size.
    An epoch stays one pass over the samples, so a larger batch means fewer steps
    per epoch.  An optimizer used directly gets whatever batch its closure holds.
    """

    batch_size: Annotated[BatchSize, BATCH_CHOICES] = None
    """Gradient batch: None keeps the task's, 'full' the whole training set, an int is capped at its size."""


#: what the constructor arguments that are not settings mean (used in the generated ``Args:``)
CONSTRUCTOR_ARGS = {
    "params": "the parameters to optimize: an iterable of tensors, or of param-group dicts where groups are allowed "
    "(MuonWithAdamW also takes the model, or groups with use_muon, to tell hidden matrices from the rest).",
    "base": "the optimizer to wrap (any ``torch.optim.Optimizer``).",
    "raise_on_nonfinite": "raise ``FloatingPointError`` on a non-finite loss or gradient (default: reject the step).",
}

_Documented = TypeVar("_Documented", bound=type)


def document_settings(cls: _Documented) -> _Documented:
    """Class decorator: put an ``Args:`` section into ``cls``'s docstring, one line per
    constructor argument in signature order, a setting's from ``cls.Settings`` (its
    type, default and description), so the docstring cannot drift from the model.
    The section goes before an ``Example:`` heading, else at the end; a
    ``References:`` section with the settings' ``reference`` ends the docstring."""
    settings: type[OptimizerSettings] = cls.__dict__["Settings"]
    lines = ["Args:"]
    for name, parameter in inspect.signature(cls).parameters.items():
        if name in settings.model_fields:
            field = settings.model_fields[name]
            lines.append(f"    {name} ({parameter.annotation}, default {field.default!r}): {field.description}")
        else:
            lines.append(f"    {name}: {CONSTRUCTOR_ARGS[name]}")
    section = "\n".join("    " + line for line in lines) + "\n\n"
    doc = cls.__doc__ or ""
    at = doc.find("    Example")
    doc = doc[:at] + section + doc[at:] if at >= 0 else doc.rstrip() + "\n\n" + section
    cls.__doc__ = doc.rstrip() + f"\n\n    References:\n        {settings.reference}\n"
    return cls
