"""Task registry: name -> builder, settings model, summary and metric direction; and
:func:`build_task`, which validates a task's settings and builds it.

Tasks and optimizers (:data:`hpo2.optim.registry.REGISTRY`) register the same way:
one central list in the package's ``registry.py`` that names every entry.  A list
rather than a decorator on each builder because (1) the registry is complete by
construction: nothing depends on which modules happen to have been imported, and
importing a module has no side effect on a global table; (2) the order is written
down once, and it is the order of every "allowed:" message and listing; (3) one
file shows every task with what can be known of it without building any data
(``higher_is_better``, which sets a study's objective direction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError

from hpo2.errors import SettingsError, check_known, did_you_mean
from hpo2.tasks.autoencoder import AutoencoderSettings, fmnist_autoencoder
from hpo2.tasks.base import Task, TaskSettings, head, split_size, target_label
from hpo2.tasks.image_classification import (
    ImageTaskSettings,
    check_cifar10,
    check_fashion_mnist,
    check_mnist,
    cifar10_3c3d,
    fmnist_2c2d,
    fmnist_mlp,
    mnist_mlp,
)
from hpo2.tasks.language_model import LanguageModelSettings, byte_gpt, check_corpus
from hpo2.tasks.small import digits_mlp, logreg_breast_cancer, mnist1d_mlp
from hpo2.tasks.synthetic import CurvesSettings, curves_autoencoder, quadratic_deep

TaskBuilder = Callable[[Any], Task]
DataCheck = Callable[[Any], None]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to build it, and what can be known of it without building it.

    ``higher_is_better`` is the direction of the task's metric, so a study sets its
    objective's direction without loading a data set; ``metric`` and ``target`` (its
    time-to-target threshold) are shown by ``hpo2 tasks NAME`` and the study report
    the same way (:func:`build_task` checks that the built task agrees); ``check_data`` raises
    :class:`~hpo2.errors.DataMissingError` when the task's data files are not there,
    without reading them (None: the task generates or bundles its data)."""

    name: str
    settings: type[TaskSettings]
    build: TaskBuilder
    summary: str
    higher_is_better: bool
    check_data: DataCheck | None = None
    metric: str = field(kw_only=True)
    target: float = field(kw_only=True)

    @property
    def target_label(self) -> str:
        """``valid accuracy >= 0.95``: when the task counts as solved (:func:`target_label`)."""
        return target_label(self.metric, self.higher_is_better, self.target)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("fmnist_mlp", TaskSettings, fmnist_mlp, "Fashion-MNIST, MLP 784-1000-500-100-10 (DeepOBS)", True,
                 check_fashion_mnist, metric="accuracy", target=0.85),
        TaskSpec("fmnist_2c2d", TaskSettings, fmnist_2c2d, "Fashion-MNIST, 2 conv + 2 dense layers (DeepOBS)", True,
                 check_fashion_mnist, metric="accuracy", target=0.90),
        TaskSpec("mnist_mlp", ImageTaskSettings, mnist_mlp,
                 "MNIST, MLP 784-1000-500-100-10 (files or torchvision download)", True, check_mnist,
                 metric="accuracy", target=0.97),
        TaskSpec("cifar10_3c3d", ImageTaskSettings, cifar10_3c3d,
                 "CIFAR-10, 3 conv + 3 dense layers (DeepOBS; files or torchvision download)", True, check_cifar10,
                 metric="accuracy", target=0.75),
        TaskSpec("quadratic_deep", TaskSettings, quadratic_deep, "DeepOBS noisy quadratic, 100 dims", False,
                 metric="loss", target=90.0),
        TaskSpec("curves_autoencoder", CurvesSettings, curves_autoencoder,
                 "Martens' deep autoencoder on generated CURVES-like images", False,
                 metric="reconstruction_error", target=10.0),
        TaskSpec("fmnist_autoencoder", AutoencoderSettings, fmnist_autoencoder,
                 "Fashion-MNIST deep autoencoder 784-1000-500-250-30 (Hinton & Salakhutdinov)", False,
                 check_fashion_mnist, metric="reconstruction_error", target=60.0),
        TaskSpec("digits_mlp", TaskSettings, digits_mlp, "scikit-learn digits, MLP 64-64-10", True,
                 metric="accuracy", target=0.95),
        TaskSpec("logreg_breast_cancer", TaskSettings, logreg_breast_cancer,
                 "scikit-learn breast cancer, L2 logistic regression", True,
                 metric="accuracy", target=0.96),
        TaskSpec("mnist1d_mlp", TaskSettings, mnist1d_mlp, "MNIST-1D, MLP 40-100-100-10 (Greydanus 2020)", True,
                 metric="accuracy", target=0.60),
        TaskSpec("byte_gpt", LanguageModelSettings, byte_gpt,
                 "byte-level GPT (1.3M parameters) on pinned Python source; validation bits per byte", False,
                 check_corpus, metric="bits_per_byte", target=3.3),
    ]
}  # fmt: skip


def parse_task_settings(name: str, values: dict[str, Any] | None, where: str = "task") -> tuple[TaskSpec, TaskSettings]:
    """Validate a task name and settings, naming the bad field and what is allowed."""
    if name not in TASKS:
        raise SettingsError(f"{where}.name: {name!r} is not a known task{did_you_mean(name, TASKS)}; "
                            f"allowed: {', '.join(TASKS)}")
    spec = TASKS[name]
    values = dict(values or {})
    check_known(values, spec.settings.model_fields, f"{where}.settings", "setting(s)")
    try:
        return spec, spec.settings(**values)
    except ValidationError as exc:
        problems = [
            f"{where}.settings.{'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        ]
        raise SettingsError("; ".join(problems)) from None


def check_task_data(name: str, settings: dict[str, Any] | None = None) -> None:
    """Validate the task's settings and check that its data files are there, reading
    none of them (:class:`~hpo2.errors.DataMissingError` says how to get them)."""
    spec, parsed = parse_task_settings(name, settings)
    if spec.check_data is not None:
        spec.check_data(parsed)


def build_task(name: str, settings: dict[str, Any] | None = None) -> Task:
    """Build task ``name`` with ``settings`` (a dict validated by its settings model)."""
    spec, parsed = parse_task_settings(name, settings)
    torch.manual_seed(parsed.seed)
    return build_parsed(spec, parsed)


def build_parsed(spec: TaskSpec, parsed: TaskSettings) -> Task:
    """Build a registered task from settings already validated (torch already seeded), and
    apply the settings every task shares: the first ``n_train`` / ``n_valid`` samples (refused
    beyond the split), ``batch_size`` and ``target``."""
    task = spec.build(parsed)
    for attribute in ("higher_is_better", "metric", "target"):
        built, registered = getattr(task, attribute), getattr(spec, attribute)
        if built != registered:
            raise RuntimeError(f"task {spec.name!r}: built with {attribute}={built}, registered with {registered}")
    for key, split in (("n_train", task.train), ("n_valid", task.valid)):
        asked = getattr(parsed, key)
        size = split_size(split)
        if asked is not None and asked > size:
            raise SettingsError(f"task.settings.{key} = {asked}: {spec.name} has {size} "
                                f"{key.removeprefix('n_')} samples; give at most {size} (null: all)")
    task.train = head(task.train, parsed.n_train)
    task.valid = head(task.valid, parsed.n_valid)
    if parsed.batch_size is not None:
        task.batch_size = parsed.batch_size
    if parsed.target is not None:
        task.target = parsed.target
    return task
