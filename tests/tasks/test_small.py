"""Small tasks (hpo2.tasks.small and the generated ones): each builds and one epoch lowers the loss."""

from __future__ import annotations

import pytest

from hpo2.tasks import build_task
from tests.tasks.helpers import one_epoch_lowers_loss


@pytest.mark.parametrize(
    "name,settings",
    [
        ("digits_mlp", {}),
        ("logreg_breast_cancer", {}),
        ("mnist1d_mlp", {"n_train": 800}),
        ("quadratic_deep", {}),
        ("curves_autoencoder", {"size_train": 300, "size_valid": 50, "size_test": 50, "batch_size": 50}),
    ],
)
def test_small_tasks_build_and_one_epoch_lowers_loss(name, settings):
    one_epoch_lowers_loss(build_task(name, settings))
