"""Deep autoencoder on real Fashion-MNIST: Hinton & Salakhutdinov's (2006, Science
313:504) MNIST architecture, the benchmark Martens (2010, sec. 6) ran
Hessian-free on.

``fmnist_autoencoder``: 784-1000-500-250-30 encoder of logistic units with a linear
30-unit code, mirrored logistic decoder, 784 logistic outputs trained with
cross-entropy against the pixel intensities in [0, 1]; Martens' sparse
initialisation (15 non-zero incoming weights per unit).  The reported metric is
the squared reconstruction error summed over pixels, averaged over images (the
quantity Martens tabulates).  The data are Fashion-MNIST, not MNIST, so numbers
are not comparable with the papers' MNIST results.  Default sizes suit a 2-core
CPU (5,000 training images, 2,000 validation images; raise ``n_train`` for the
full 50,000).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from hpo2.tasks.base import Split, Task, TaskSettings
from hpo2.tasks.image_classification import fashion_mnist_splits
from hpo2.tasks.synthetic import deep_autoencoder, squared_reconstruction_error


class AutoencoderSettings(TaskSettings):
    """A subset by default: the full 60,000 images make a trial minutes long on a CPU."""

    n_train: int | None = Field(default=5_000, ge=1)
    """use only the first n training images (null: all)"""
    n_valid: int | None = Field(default=2_000, ge=1)
    """use only the first n validation images (null: all)"""


def _as_reconstruction(split: Split) -> Split:
    flat = split.x.reshape(len(split.x), -1)
    return Split(flat, flat)


def fmnist_autoencoder(settings: AutoencoderSettings) -> Task:
    """The autoencoder; task batch 1,000 (for first-order methods); target 60 squared
    reconstruction error on the validation images (about what tuned Adam reaches in
    40 s of a shared 2-core CPU on 2,000 images)."""
    train, valid, test = (_as_reconstruction(s) for s in fashion_mnist_splits(settings))
    return Task(
        name="fmnist_autoencoder", model=deep_autoencoder((784, 1000, 500, 250, 30)), loss_fn=nn.BCEWithLogitsLoss(),
        train=train, valid=valid, test=test, batch_size=1000, metric="reconstruction_error",
        metric_fn=squared_reconstruction_error, higher_is_better=False, target=60.0,
        reference="not comparable to Martens (2010) or Hinton & Salakhutdinov (2006): Fashion-MNIST, not MNIST",
    )  # fmt: skip
