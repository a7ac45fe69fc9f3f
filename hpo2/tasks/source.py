"""Where a task comes from: a built-in task by name, or the user's own code.

A study or train file names its task in one of two ways::

    task: digits_mlp                                   # built in (hpo2 tasks lists them)
    task: {entrypoint: "my_pkg.tasks:build", settings: {hidden: 128}}
    task: {entrypoint: "./tasks/my_task.py:build"}     # a file, relative to the study file

An **entrypoint** is ``module:function`` (imported as ``import module`` would, with
the current folder on the path, as ``python -m`` has it) or ``path/to/file.py:function``
(a path relative to the folder of the file that names it, or absolute).  The
function returns a :class:`~hpo2.tasks.base.Task` and declares its settings in one
of two ways:

* one parameter annotated with a pydantic model (a subclass of
  :class:`~hpo2.tasks.base.TaskSettings` gets ``seed``, ``batch_size``, ``target``... too)::

      class Settings(hpo2.TaskSettings):
          hidden: int = 64
      def build(settings: Settings) -> hpo2.Task: ...

* keyword arguments, each with a default (a parameter without one is a required setting)::

      def build(hidden: int = 64, seed: int = 0) -> hpo2.Task: ...

The settings in the file are validated against that declaration before the
function is called.  Three settings are always accepted, because hpo2 itself sets
or uses them: ``seed`` (the study's seed; torch's global generator is seeded with it
before the call, and it is passed on when the function declares it), ``batch_size``
and ``target`` (the Task's own unless given; applied after the call when the
function does not take them itself).

**Code runs only from files the user names.**  Naming an entrypoint in a study or
train file runs that code, as ``python file.py`` would.  Reading a study file
(``hpo2 study list``, a warm start, a suite's ``optimizers_from``) validates the
section's shape and imports nothing; nothing read from an Optuna storage or from
MLflow is ever imported.  Code is imported only by :func:`resolve_task`, which the
training loop, the study runner and ``hpo2 tasks ENTRYPOINT`` call.

Every mistake is one :class:`~hpo2.errors.SettingsError` line that names the file:
a missing file, module or function, an import that fails inside the user's module,
a wrong return type, an unknown or invalid setting.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from hpo2.errors import SettingsError, check_known
from hpo2.tasks.base import Task, TaskSettings
from hpo2.tasks.registry import TASKS, TaskSpec, build_parsed, parse_task_settings

#: settings hpo2 sets or reads itself, accepted by every task (see the module docstring)
HPO2_SETTINGS = ("seed", "batch_size", "target")
_HPO2_FIELDS = {name: TaskSettings.model_fields[name] for name in HPO2_SETTINGS}

TaskBuilder = Callable[..., Task]


class TaskSection(BaseModel):
    """The ``task`` section of a study or train file: ``name`` (a built-in task) or
    ``entrypoint`` (the user's own, see the module docstring), and its ``settings``.
    A bare string is a built-in task's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    entrypoint: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> TaskSection:
        if (self.name is None) == (self.entrypoint is None):
            raise ValueError("give exactly one of name (a built-in task, see `hpo2 tasks`) or entrypoint "
                             "('my_pkg.tasks:build' or './tasks/my_task.py:build')")
        if self.entrypoint is not None:
            split_entrypoint(self.entrypoint)
        return self

    @property
    def label(self) -> str:
        """How the task is shown and logged: its name, or its entrypoint (a file's name without its folder)."""
        if self.entrypoint is None:
            return str(self.name)
        target, function = split_entrypoint(self.entrypoint)
        return f"{Path(target).name}:{function}" if _is_path(target) else self.entrypoint

    def anchored(self, base_dir: Path) -> TaskSection:
        """This section with a relative file entrypoint made absolute against ``base_dir``
        (the folder of the file that names it), so it means the same from any folder."""
        if self.entrypoint is None:
            return self
        target, function = split_entrypoint(self.entrypoint)
        if not _is_path(target) or Path(target).expanduser().is_absolute():
            return self
        return self.model_copy(update={"entrypoint": f"{(base_dir / target).resolve()}:{function}"})

    def check_builtin(self, where: str = "task") -> None:
        """Validate a built-in task's name and settings now (reading a file imports no user code,
        so an entrypoint's settings are checked when it is resolved)."""
        if self.name is not None:
            parse_task_settings(self.name, self.settings, where)


def builtin_task_problem(raw: Any, where: str = "task") -> str | None:
    """What is wrong with a file's raw ``task`` section naming a built-in task (its name or
    settings), or None: a file's other mistakes are reported with it, in one message."""
    try:
        TaskSection.model_validate(raw).check_builtin(where)
    except SettingsError as exc:
        return str(exc)
    except ValidationError:
        return None  # the section's shape: the file's schema validation reports it
    return None


def split_entrypoint(entrypoint: str) -> tuple[str, str]:
    """``(module or file, function)`` of ``"a.b:f"`` or ``"path/x.py:f"``; ValueError if malformed."""
    target, sep, function = entrypoint.rpartition(":")
    if not sep or not target or not all(part.isidentifier() for part in function.split(".")):
        raise ValueError(f"entrypoint {entrypoint!r}: write 'module:function' or 'path/to/file.py:function'")
    return target, function


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


@dataclass(frozen=True)
class TaskSource:
    """A task ready to build: its label, settings model and builder.

    ``higher_is_better`` is known without building for a built-in task (its
    registry entry) and only after building for the user's own (None)."""

    label: str
    settings: type[BaseModel]
    summary: str
    higher_is_better: bool | None
    _build: Callable[[BaseModel], Task]
    _check_data: Callable[[BaseModel], None] | None = None
    where: str = "task"
    origin: str = ""  # the file (or module) of the user's task function, named in its errors

    def parse(self, values: Mapping[str, Any] | None) -> BaseModel:
        """Validate ``values`` against the task's settings (one line naming each bad field,
        after the task function's file)."""
        prefix = f"{self.origin} ({self.label}): " if self.origin else ""
        return _validated(self.settings, dict(values or {}), f"{self.where}.settings", prefix)

    def check_data(self, values: Mapping[str, Any] | None) -> None:
        """Validate the settings and check the task's data files are there (built-in tasks; reads none)."""
        parsed = self.parse(values)
        if self._check_data is not None:
            self._check_data(parsed)

    def build(self, values: Mapping[str, Any] | None = None) -> Task:
        """Validate ``values``, seed torch with their ``seed`` and build the task."""
        parsed = self.parse(values)
        torch.manual_seed(int(getattr(parsed, "seed", 0) or 0))
        return self._build(parsed)


def _validated(model: type[BaseModel], values: dict[str, Any], where: str, prefix: str = "") -> BaseModel:
    try:
        check_known(values, model.model_fields, where, "setting(s)")
        return model(**values)
    except SettingsError as exc:
        raise SettingsError(f"{prefix}{exc}") from None
    except ValidationError as exc:
        problems = [f"{where}.{'.'.join(str(p) for p in e['loc'])}" + _problem(e) for e in exc.errors()]
        raise SettingsError(prefix + "; ".join(problems)) from None


def _problem(error: Any) -> str:
    """What is wrong with one field, as pydantic reported it (a missing one has no value to show)."""
    if error["type"] == "missing":
        return ": required (it has no default)"
    return f" = {error.get('input')!r}: {error['msg']}"


def _builtin(spec: TaskSpec) -> TaskSource:
    def build(settings: BaseModel) -> Task:
        return build_parsed(spec, settings)  # type: ignore[arg-type]  # a built-in's model subclasses TaskSettings

    return TaskSource(spec.name, spec.settings, spec.summary, spec.higher_is_better, build, spec.check_data)


def resolve_task(
    section: TaskSection | Mapping[str, Any] | str, base_dir: Path | None = None, where: str = "task"
) -> TaskSource:
    """The :class:`TaskSource` of a task section: a built-in by name, or the user's
    entrypoint imported now (a path resolved against ``base_dir``, the folder of the
    file that names it; the current folder when None)."""
    if not isinstance(section, TaskSection):
        try:
            section = TaskSection.model_validate(section)
        except ValidationError as exc:
            raise SettingsError(f"{where}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    if section.name is not None:
        parse_task_settings(section.name, {}, where)  # an unknown name: one line with the allowed ones
        return _builtin(TASKS[section.name])
    assert section.entrypoint is not None  # _one_source
    function, origin = load_entrypoint(section.entrypoint, base_dir)
    return task_from_function(function, section.entrypoint, origin, where)


def load_entrypoint(entrypoint: str, base_dir: Path | None = None) -> tuple[Callable[..., Any], str]:
    """Import ``entrypoint``'s module or file and return ``(function, origin)``, where
    ``origin`` names the file or module for error messages."""
    try:
        target, name = split_entrypoint(entrypoint)
    except ValueError as exc:
        raise SettingsError(f"task.entrypoint: {exc}") from None
    if _is_path(target):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        path = path.resolve()
        origin = str(path)
        if not path.is_file():
            raise SettingsError(f"{origin}: task.entrypoint {entrypoint!r}: no such file")
        module = _import_file(path, entrypoint)
    else:
        module = _import_module(target, entrypoint)
        origin = getattr(module, "__file__", None) or target
    function: Any = module
    for part in name.split("."):  # a dotted name: an attribute of a class or object in the module
        function = getattr(function, part, None)
    if function is None:
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise SettingsError(f"{origin}: task.entrypoint {entrypoint!r}: no function {name!r} in it"
                            f"{'; functions there: ' + ', '.join(public) if public else ''}")
    if not callable(function):
        raise SettingsError(f"{origin}: task.entrypoint {entrypoint!r}: {name} is a {type(function).__name__}, "
                            "not a function that returns a hpo2.Task")
    return function, origin


def _import_error(origin: str, entrypoint: str, exc: BaseException) -> SettingsError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return SettingsError(f"{origin}: task.entrypoint {entrypoint!r}: importing it failed "
                         f"({type(exc).__name__}: {first})")


def _import_file(path: Path, entrypoint: str) -> Any:
    """Import a task file once per process under a name derived from its path (so
    DataLoader workers, pickling and dataclasses see a real module)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"hpo2_user_task_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise SettingsError(f"{path}: task.entrypoint {entrypoint!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed: its error, on one line naming its file
        del sys.modules[module_name]
        raise _import_error(str(path), entrypoint, exc) from None
    return module


def _import_module(target: str, entrypoint: str) -> Any:
    """``import target`` with the current folder on the path (as ``python -m`` has it)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and target.startswith(exc.name):
            raise SettingsError(f"{target}: task.entrypoint {entrypoint!r}: no module named {exc.name!r} "
                                f"(import path: the current folder and the installed packages)") from None
        raise _import_error(target, entrypoint, exc) from None
    except Exception as exc:
        raise _import_error(target, entrypoint, exc) from None
    finally:
        if added:
            sys.path.remove(cwd)


@dataclass(frozen=True)
class _Declared:
    """What a task function declares: its settings model (hpo2's settings added), the
    names it takes itself, and how to call it with validated settings."""

    model: type[BaseModel]
    own: frozenset[str]
    call: Callable[[BaseModel], Any]


def declared_settings(function: Callable[..., Any], origin: str, entrypoint: str) -> _Declared:
    """Read the settings a task function declares (module docstring): one pydantic-model
    parameter, or keyword arguments whose defaults are the settings' defaults."""
    try:
        signature = inspect.signature(function)
        hints = inspect.get_annotations(function, eval_str=True)
    except (TypeError, ValueError, NameError) as exc:
        raise SettingsError(f"{origin}: task.entrypoint {entrypoint!r}: cannot read its signature ({exc})") from None
    params = list(signature.parameters.values())
    label = f"{getattr(function, '__name__', 'task')}_settings"
    only_hint = hints.get(params[0].name) if len(params) == 1 else None
    if isinstance(only_hint, type) and issubclass(only_hint, BaseModel):
        user_model: type[BaseModel] = only_hint
        own = frozenset(user_model.model_fields)

        def call_with_model(settings: BaseModel) -> Any:
            return function(user_model(**{k: getattr(settings, k) for k in own}))

        model = _with_hpo2_settings_model(user_model, label)
        return _Declared(model, own, call_with_model)
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise SettingsError(f"{origin}: task.entrypoint {entrypoint!r}: parameter {p.name!r} must be a keyword "
                                "argument with a default, or the function's one parameter a pydantic settings model")
        annotation = hints.get(p.name, Any if p.default is p.empty else type(p.default))
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    own = frozenset(fields)
    for name, info in _HPO2_FIELDS.items():
        fields.setdefault(name, (info.annotation, info))
    model = create_model(
        label, __config__=ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True), **fields
    )

    def call_with_keywords(settings: BaseModel) -> Any:
        return function(**{k: getattr(settings, k) for k in own})

    return _Declared(model, own, call_with_keywords)


def _with_hpo2_settings_model(user_model: type[BaseModel], label: str) -> type[BaseModel]:
    """``user_model`` with the :data:`HPO2_SETTINGS` it lacks (unknown keys are refused by
    :meth:`TaskSource.parse` before the model sees them)."""
    missing = {k: (info.annotation, info) for k, info in _HPO2_FIELDS.items() if k not in user_model.model_fields}
    if not missing:
        return user_model
    return create_model(label, __base__=user_model, **missing)  # type: ignore[call-overload]  # run-time fields


def task_from_function(function: TaskBuilder, entrypoint: str, origin: str = "", where: str = "task") -> TaskSource:
    """A :class:`TaskSource` over the user's ``function`` (module docstring: how it declares its settings)."""
    origin = origin or getattr(inspect.getmodule(function), "__file__", None) or entrypoint
    declared = declared_settings(function, origin, entrypoint)

    def build(settings: BaseModel) -> Task:
        task = declared.call(settings)
        if not isinstance(task, Task):
            raise SettingsError(f"{origin}: task.entrypoint {entrypoint!r} returned a {type(task).__name__}; "
                                "it must return a hpo2.Task (model, loss_fn, train/valid data, metric...)")
        # hpo2's own settings that the function left to hpo2
        if "batch_size" not in declared.own and getattr(settings, "batch_size", None) is not None:
            task.batch_size = settings.batch_size  # type: ignore[attr-defined]  # one of _HPO2_FIELDS
        if "target" not in declared.own and getattr(settings, "target", None) is not None:
            task.target = settings.target  # type: ignore[attr-defined]  # one of _HPO2_FIELDS
        return task

    summary = (inspect.getdoc(function) or "").strip().splitlines()
    return TaskSource(entrypoint, declared.model, summary[0] if summary else f"the task built by {entrypoint}", None,
                      build, where=where, origin=origin)


def entrypoint_for(function: TaskBuilder) -> str:
    """``module:qualname`` of a function passed from Python (how its study records and exports it);
    a function defined inside another one is recorded by its name alone (it cannot be imported back)."""
    name = function.__qualname__ if "<locals>" not in function.__qualname__ else function.__name__
    return f"{function.__module__}:{name}"
