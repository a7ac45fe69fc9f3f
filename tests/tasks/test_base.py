"""The task registry (hpo2.tasks.registry): every task states its target, split, direction and data check."""

from __future__ import annotations

import dataclasses

import pytest

from hpo2.errors import DataMissingError
from hpo2.tasks import TASKS, build_task, check_task_data


def test_every_task_states_its_target_and_split():
    assert {"fmnist_mlp", "fmnist_2c2d", "curves_autoencoder", "mnist1d_mlp", "digits_mlp",
            "logreg_breast_cancer", "quadratic_deep", "mnist_mlp", "cifar10_3c3d"} <= set(TASKS)
    for spec in TASKS.values():
        assert spec.build.__doc__ and spec.summary


@pytest.mark.parametrize("name", ["digits_mlp", "logreg_breast_cancer", "quadratic_deep", "mnist1d_mlp"])
def test_the_registered_direction_is_the_built_tasks(name):
    """A study reads ``higher_is_better`` (and the report the metric and target) from the registry
    without building data: they must be the task's own."""
    task, spec = build_task(name, {"n_train": 64, "n_valid": 32}), TASKS[name]
    assert (task.higher_is_better, task.metric, task.target) == (spec.higher_is_better, spec.metric, spec.target)
    assert task.target_label == spec.target_label


def test_a_registration_that_disagrees_with_its_task_is_refused(monkeypatch):
    spec = TASKS["quadratic_deep"]
    monkeypatch.setitem(TASKS, "quadratic_deep", dataclasses.replace(spec, higher_is_better=True))
    with pytest.raises(RuntimeError, match="built with higher_is_better=False, registered with True"):
        build_task("quadratic_deep", {"n_train": 64, "n_valid": 32})
    monkeypatch.setitem(TASKS, "quadratic_deep", dataclasses.replace(spec, target=1.0))
    with pytest.raises(RuntimeError, match="built with target=90.0, registered with 1.0"):
        build_task("quadratic_deep", {"n_train": 64, "n_valid": 32})


FILE_TASKS = {"fmnist_mlp", "fmnist_2c2d", "mnist_mlp", "cifar10_3c3d", "fmnist_autoencoder", "byte_gpt"}  # read files


def test_every_task_that_reads_files_checks_them_without_building():
    assert {name for name, spec in TASKS.items() if spec.check_data is not None} == FILE_TASKS


@pytest.mark.parametrize("name", sorted(FILE_TASKS))
def test_the_data_check_fails_as_the_build_does(name, tmp_path):
    settings = {"data_dir": str(tmp_path / "none")}
    with pytest.raises(DataMissingError) as built:
        build_task(name, settings)
    with pytest.raises(DataMissingError) as checked:
        check_task_data(name, settings)
    assert str(checked.value) == str(built.value)
