"""The task registry (hpo2.tasks.base): every task states its target and split."""

from __future__ import annotations

from hpo2.tasks import TASKS


def test_every_task_states_its_target_and_split():
    assert {"fmnist_mlp", "fmnist_2c2d", "curves_autoencoder", "mnist1d_mlp", "digits_mlp",
            "logreg_breast_cancer", "quadratic_deep", "mnist_mlp", "cifar10_3c3d"} <= set(TASKS)
    for spec in TASKS.values():
        assert spec.build.__doc__ and spec.summary
